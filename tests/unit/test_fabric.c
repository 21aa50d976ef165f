/*
 * Unit tests: the libfabric transport with real endpoints (tcp;ofi_rxm on
 * loopback; no fakes): messages both ways, pipelined RMA reads of a
 * peer's registered memory, and a dead peer that must not hang a read.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../engine/fabric.h"
#include "../../engine/log.h"

struct inbox {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	char msg[VP_FAB_MAX_MSG];
	size_t len;
	vp_fab_addr src;
	int count;
};

static void on_msg(void *arg, vp_fab_addr src, const void *msg, size_t len)
{
	struct inbox *in = arg;

	pthread_mutex_lock(&in->lock);
	in->src = src;
	memcpy(in->msg, msg, len);
	in->len = len;
	in->count++;
	pthread_cond_broadcast(&in->cond);
	pthread_mutex_unlock(&in->lock);
}

/* Waits for the count-th message (the event, with a generous deadline). */
static int wait_msg(struct inbox *in, int count)
{
	struct timespec ts;
	int ok;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	pthread_mutex_lock(&in->lock);
	while (in->count < count &&
	       pthread_cond_timedwait(&in->cond, &in->lock, &ts) != ETIMEDOUT)
		;
	ok = in->count >= count;
	pthread_mutex_unlock(&in->lock);
	return ok;
}

static void free_port(char *buf, size_t len)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	bind(fd, (struct sockaddr *)&a, sizeof(a));
	getsockname(fd, (struct sockaddr *)&a, &l);
	snprintf(buf, len, "%u", ntohs(a.sin_port));
	close(fd);
}

static struct inbox pin = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER },
		    cin = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static void test_messages_and_rma_read(void **state)
{
	char port[16], err[256], name[VP_FAB_NAME_MAX], hello[VP_FAB_NAME_MAX + 8];
	struct vp_fab *prod, *cons;
	vp_fab_addr to_prod, to_cons;
	struct vp_fab_mr *pmr, *cmr;
	uint64_t key, raddr;
	size_t size = 8u << 20;
	char *src, *dst;
	struct vp_fab_read_req reqs[8];
	int nlen;

	(void)state;
	free_port(port, sizeof(port));
	prod = vp_fab_open("tcp;ofi_rxm", "127.0.0.1", port, VP_FAB_LISTEN, on_msg, &pin, err, sizeof(err));
	if (!prod)
		fail_msg("producer: %s", err);
	/* bound as repl binds a consumer (an address towards the producer, any port), and
	 * asking for FI_HMEM (GPU-direct) where the provider has none still opens */
	cons = vp_fab_open("tcp;ofi_rxm", "127.0.0.1", "0", VP_FAB_HMEM, on_msg, &cin, err, sizeof(err));
	if (!cons)
		fail_msg("consumer: %s", err);
	if (vp_fab_has_hmem(cons) < 2) {	/* then device memory is refused, clearly */
		char dev[64];
		struct vp_fab_mr *dmr;

		assert_int_equal(vp_fab_mr_reg_dev(cons, dev, sizeof(dev), 0, 0, &dmr, NULL, NULL),
				 -EOPNOTSUPP);
	}
	assert_string_equal(vp_fab_provider(prod), "tcp;ofi_rxm");
	assert_int_equal(vp_fab_insert_host(cons, "127.0.0.1", port, &to_prod), 0);

	/* consumer -> producer: "hello" and its own name, so it can answer */
	nlen = vp_fab_name(cons, name, sizeof(name));
	assert_true(nlen > 0);
	memcpy(hello, "hello", 5);
	memcpy(hello + 5, name, (size_t)nlen);
	assert_int_equal(vp_fab_send(cons, to_prod, hello, 5 + (size_t)nlen, 10), 0);
	assert_true(wait_msg(&pin, 1));
	assert_memory_equal(pin.msg, "hello", 5);
	assert_true(pin.src == VP_FAB_ADDR_UNKNOWN);	/* not in the producer's AV yet */
	/* a name of the wrong length or family is refused before the provider reads it */
	assert_int_equal(vp_fab_insert_name(prod, pin.msg + 5, 4, &to_cons), -EINVAL);
	{
		char bad[VP_FAB_NAME_MAX];

		memcpy(bad, pin.msg + 5, pin.len - 5);
		bad[0] ^= 0x7f;		/* sa_family */
		assert_int_equal(vp_fab_insert_name(prod, bad, pin.len - 5, &to_cons), -EINVAL);
	}
	assert_int_equal(vp_fab_insert_name(prod, pin.msg + 5, pin.len - 5, &to_cons), 0);
	assert_int_equal(vp_fab_send(prod, to_cons, "world", 5, 10), 0);
	assert_true(wait_msg(&cin, 1));
	assert_int_equal(cin.len, 5);
	assert_memory_equal(cin.msg, "world", 5);
	assert_true(cin.src == to_prod);	/* FI_SOURCE: the sender, as the provider saw it */
	/* once inserted, the consumer's messages carry its address */
	assert_int_equal(vp_fab_send(cons, to_prod, "again", 5, 10), 0);
	assert_true(wait_msg(&pin, 2));
	assert_true(pin.src == to_cons);

	/* the consumer reads the producer's registered memory, 1 MiB at a time, 4 in flight */
	src = aligned_alloc(4096, size);
	dst = aligned_alloc(4096, size);
	for (size_t i = 0; i < size; i++)
		src[i] = (char)(i * 7 + (i >> 20));
	memset(dst, 0, size);
	assert_int_equal(vp_fab_mr_reg(prod, src, size, &pmr, &key, &raddr), 0);
	assert_int_equal(vp_fab_mr_reg_dev(cons, dst, size, -1, 0, &cmr, NULL, NULL), 0);
	for (int i = 0; i < 8; i++) {
		reqs[i].mr = cmr;
		reqs[i].local = dst + ((size_t)i << 20);
		reqs[i].len = 1u << 20;
		reqs[i].remote_addr = raddr + ((uint64_t)i << 20);
		reqs[i].key = key;
	}
	assert_int_equal(vp_fab_read(cons, to_prod, reqs, 8, 4, 30), 0);
	assert_memory_equal(src, dst, size);

	{
		/*
		 * memory registered for local use only is not readable, even with its
		 * key (first: on tcp a failed read also ends the connection)
		 */
		struct vp_fab_mr *lmr;
		uint64_t lkey, lraddr;
		char *priv = aligned_alloc(4096, 1u << 20);

		memset(priv, 0x5a, 1u << 20);
		assert_int_equal(vp_fab_mr_reg_dev(prod, priv, 1u << 20, -1, 0, &lmr, &lkey, &lraddr), 0);
		memset(dst, 0, 1u << 20);
		reqs[0].key = lkey;
		reqs[0].remote_addr = lraddr;
		assert_true(vp_fab_read(cons, to_prod, reqs, 1, 1, 10) < 0);
		assert_true(dst[0] == 0 && dst[(1u << 20) - 1] == 0);
		vp_fab_mr_close(lmr);
		free(priv);
		reqs[0].remote_addr = raddr;
	}
	/* a bad key fails the read, it does not hang */
	reqs[0].key = key + 12345;
	assert_true(vp_fab_read(cons, to_prod, reqs, 1, 1, 10) < 0);
	/* a neighbouring key reads nothing either: keys are random, not a sequence */
	reqs[0].key = key + 1;
	assert_true(vp_fab_read(cons, to_prod, reqs, 1, 1, 10) < 0);
	reqs[0].key = key - 1;
	assert_true(vp_fab_read(cons, to_prod, reqs, 1, 1, 10) < 0);

	/* the producer dies: a read returns an error within its deadline */
	vp_fab_mr_close(pmr);
	vp_fab_close(prod);
	reqs[0].key = key;
	assert_true(vp_fab_read(cons, to_prod, reqs, 1, 1, 3) < 0);
	vp_fab_mr_close(cmr);
	vp_fab_close(cons);
	free(src);
	free(dst);
}

/*
 * A provider that offers FI_HMEM (shm, on one node): the endpoint opens
 * with it, host memory registers and moves through it as before, and
 * CUDA memory is refused cleanly where libfabric has no CUDA support.
 */
/*
 * The shm endpoint's state: the provider backs it with a file in /dev/shm
 * that only its close removes, so teardown closes it even when an
 * assertion ended the test early.
 */
struct shm_case {
	struct inbox in;
	struct vp_fab *fab;
	struct vp_fab_mr *smr, *dmr;
	char *src, *dst;
};

static int shm_setup(void **state)
{
	struct shm_case *c = calloc(1, sizeof(*c));

	if (!c)
		return -1;
	pthread_mutex_init(&c->in.lock, NULL);
	pthread_cond_init(&c->in.cond, NULL);
	*state = c;
	return 0;
}

static int shm_teardown(void **state)
{
	struct shm_case *c = *state;

	vp_fab_mr_close(c->smr);
	vp_fab_mr_close(c->dmr);
	vp_fab_close(c->fab);	/* removes its /dev/shm file */
	free(c->src);
	free(c->dst);
	free(c);
	return 0;
}

static void test_an_fi_hmem_endpoint(void **state)
{
	struct shm_case *c = *state;
	char err[256], name[VP_FAB_NAME_MAX];
	struct vp_fab_mr *cuda_mr;
	struct vp_fab_read_req req;
	uint64_t key, raddr;
	vp_fab_addr self;
	size_t size = 4u << 20;
	int nlen, rc;

	c->fab = vp_fab_open("shm", NULL, NULL, VP_FAB_HMEM, on_msg, &c->in, err, sizeof(err));
	if (!c->fab) {
		print_message("shm provider not available here (%s): skipped\n", err);
		skip();
	}
	assert_int_equal(vp_fab_has_hmem(c->fab), 2);
	c->src = aligned_alloc(4096, size);
	c->dst = aligned_alloc(4096, size);
	for (size_t i = 0; i < size; i++)
		c->src[i] = (char)(i * 13 + 1);
	memset(c->dst, 0, size);
	assert_int_equal(vp_fab_mr_reg_dev(c->fab, c->src, size, -1, VP_FAB_MR_REMOTE_READ, &c->smr,
					   &key, &raddr), 0);
	assert_int_equal(vp_fab_mr_reg_dev(c->fab, c->dst, size, -1, 0, &c->dmr, NULL, NULL), 0);
	nlen = vp_fab_name(c->fab, name, sizeof(name));
	assert_true(nlen > 0);
	assert_int_equal(vp_fab_insert_name(c->fab, name, (size_t)nlen, &self), 0);
	req = (struct vp_fab_read_req){ .mr = c->dmr, .local = c->dst, .len = size,
					.remote_addr = raddr, .key = key };
	assert_int_equal(vp_fab_read(c->fab, self, &req, 1, 1, 30), 0);
	assert_memory_equal(c->src, c->dst, size);
	/* host memory posing as CUDA memory: refused, with an error, no crash */
	rc = vp_fab_mr_reg_dev(c->fab, c->src, size, 0, 0, &cuda_mr, NULL, NULL);
	if (rc == 0) {
		vp_fab_mr_close(cuda_mr);
		fail_msg("CUDA registration of host memory succeeded without a GPU");
	}
	print_message("shm: CUDA registration refused: %s\n", strerror(-rc));
}

static void test_bad_provider_is_a_clear_error(void **state)
{
	char err[256];

	(void)state;
	assert_null(vp_fab_open("no-such-provider", NULL, NULL, 0, NULL, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "no-such-provider"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_messages_and_rma_read),
		cmocka_unit_test_setup_teardown(test_an_fi_hmem_endpoint, shm_setup, shm_teardown),
		cmocka_unit_test(test_bad_provider_is_a_clear_error),
	};

	vp_log_set_level(LOG_WARNING);
	return cmocka_run_group_tests_name("fabric", tests, NULL, NULL);
}
