/*
 * What the unit tests that run a namespace share: a small configuration
 * and committing a file.  Included by them (#include "ns_util.c"), next
 * to cmocka.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "../../engine/config.h"
#include "../../engine/log.h"
#include "../../engine/ns.h"

/* The defaults, with a 64 MiB cache that is not faulted in, and quiet logs. */
static void test_config(struct vp_config *cfg)
{
	vp_config_defaults(cfg);
	cfg->ram_cache = 64ULL << 20;
	cfg->ram_prefault = 0;
	cfg->log_level = LOG_CRIT;
	vp_log_set_level(LOG_CRIT);
}

/*
 * Creates (or truncates) name in the root with len bytes of buf and
 * releases it: a new version.  Returns the inode number.
 */
static uint64_t put_bytes(struct vp_ns *ns, const char *name, const void *buf, size_t len)
{
	struct vp_handle *h;
	struct stat st;
	int keep, rc = vp_ns_lookup(ns, VP_ROOT_INO, name, &st);

	if (rc == -ENOENT) {
		assert_int_equal(vp_ns_create(ns, NULL, VP_ROOT_INO, name, 0644, O_WRONLY | O_CREAT,
					      &st, &h), 0);
	} else {
		assert_int_equal(rc, 0);
		assert_int_equal(vp_ns_open(ns, NULL, st.st_ino, O_WRONLY | O_TRUNC, &h, &keep), 0);
	}
	vp_ns_forget(ns, st.st_ino, 1);
	assert_int_equal(vp_ns_write(ns, h, buf, len, 0), (ssize_t)len);
	assert_int_equal(vp_ns_release(ns, h), 0);
	return st.st_ino;
}
