/*
 * vpctl_mounts: the viperfs mounts of this node, read from the kernel's
 * mount table (/proc/self/mountinfo), which still lists a mount whose
 * daemon is gone: viperctl finds such a mount without touching it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vpctl.h"

/* Undoes mountinfo's octal escapes (\040 for a space) in place. */
static void unescape(char *s)
{
	char *o = s;

	for (; *s; s++, o++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*o = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*o = *s;
		}
	}
	*o = '\0';
}

/*
 * Reads one line of mountinfo into m if it is a viperfs mount:
 *   id parent major:minor root MOUNT_POINT OPTIONS [optional...] - FSTYPE SOURCE SUPER
 * Returns 1 if it is, else 0.
 */
static int parse_line(const char *line, struct vpctl_mount *m)
{
	const char *sep = strstr(line, " - ");
	char fstype[64];

	if (!sep || sscanf(line, "%*s %*s %*s %*s %4095s %1023s", m->point, m->options) != 2 ||
	    sscanf(sep + 3, "%63s %4095s", fstype, m->source) != 2 ||
	    strcmp(fstype, "fuse.viperfs"))
		return 0;
	unescape(m->point);
	unescape(m->source);
	return 1;
}

int vpctl_mounts_list(struct vpctl_mount **out, size_t *n)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	struct vpctl_mount *list = NULL, m;
	char *line = NULL;
	size_t cap = 0, count = 0;
	int rc = 0;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		struct vpctl_mount *bigger;

		if (!parse_line(line, &m))
			continue;
		bigger = realloc(list, (count + 1) * sizeof(*list));
		if (!bigger) {
			rc = -ENOMEM;
			break;
		}
		list = bigger;
		list[count++] = m;
	}
	free(line);
	fclose(f);
	if (rc) {
		free(list);
		return rc;
	}
	*out = list;
	*n = count;
	return 0;
}

/*
 * path made absolute and normal (".", "..", repeated and trailing slashes
 * gone) by its text alone, into abs (PATH_MAX); nothing is looked up.
 * Returns 0 or -ENAMETOOLONG.
 */
static int absolute(const char *path, char *abs)
{
	char joined[2 * PATH_MAX], *save = NULL, *part;
	size_t used = 0;

	if (path[0] == '/')
		snprintf(joined, sizeof(joined), "%s", path);
	else if (getcwd(joined, PATH_MAX))
		snprintf(joined + strlen(joined), sizeof(joined) - strlen(joined), "/%s", path);
	else
		return -errno;
	abs[0] = '\0';
	for (part = strtok_r(joined, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
		if (!strcmp(part, "."))
			continue;
		if (!strcmp(part, "..")) {
			while (used > 0 && abs[used - 1] != '/')
				used--;
			used = used ? used - 1 : 0;
			abs[used] = '\0';
			continue;
		}
		if (used + 1 + strlen(part) >= PATH_MAX)
			return -ENAMETOOLONG;
		used += (size_t)sprintf(abs + used, "/%s", part);
	}
	if (!used)
		strcpy(abs, "/");
	return 0;
}

/* 1 if the mount point dir holds path (both absolute and normal). */
static int holds(const char *dir, const char *path)
{
	size_t len = strlen(dir);

	if (!strcmp(dir, "/"))
		return 1;
	return !strncmp(dir, path, len) && (path[len] == '\0' || path[len] == '/');
}

int vpctl_mount_of(const char *path, struct vpctl_mount *mnt)
{
	struct vpctl_mount *list;
	char abs[PATH_MAX];
	size_t n, best = SIZE_MAX;
	int rc = absolute(path, abs);

	if (rc)
		return rc;
	rc = vpctl_mounts_list(&list, &n);
	if (rc)
		return rc;
	/* the deepest one: a mount inside a mount is the one path is in */
	for (size_t i = 0; i < n; i++)
		if (holds(list[i].point, abs) &&
		    (best == SIZE_MAX || strlen(list[i].point) >= strlen(list[best].point)))
			best = i;
	if (best != SIZE_MAX)
		*mnt = list[best];
	free(list);
	return best == SIZE_MAX ? -ENOENT : 0;
}
