/*
 * fusermount: which fusermount3 the statically linked libfuse runs.
 *
 * libfuse 3.17 has no setting for it (no variable, no call): it spawns
 * FUSERMOUNT_DIR "/fusermount3", the bin directory of the prefix it was
 * built for, and if that fails fusermount3 on $PATH (lib/mount.c,
 * fusermount_posix_spawn).  As root it needs one for -o auto_unmount only;
 * as a user, for every mount and unmount.  Built from Debian 13's source by
 * mount-scripts/build-libfuse.sh, that prefix is the build tree's
 * build/fuse3: an installed daemon would run a program out of somebody's
 * build tree, or, where the tree is gone, Debian 12's fusermount3, which
 * refuses 3.17's auto-unmount call.
 *
 * So make install puts the fusermount3 built with the library at
 * VP_FUSERMOUNT ($(LIBEXECDIR)/fusermount3, /usr/lib/viperfs in the
 * package), and the daemon is linked with -Wl,--wrap=posix_spawn: a spawn
 * of VP_LIBFUSE_FUSERMOUNT (the path compiled into the library) runs
 * VP_FUSERMOUNT instead, where that is installed.  In a source tree where
 * nothing is installed, the build tree's runs, as before.  Every other spawn
 * (engine/hook.c's /bin/sh) goes through untouched.
 *
 * The Makefile defines both only when it links the private libfuse; with
 * the system's (a shared library that finds its own fusermount3) this file
 * is empty.
 */
#define _GNU_SOURCE
#include <spawn.h>
#include <string.h>
#include <unistd.h>

#if defined(VP_FUSERMOUNT) && defined(VP_LIBFUSE_FUSERMOUNT)

int __real_posix_spawn(pid_t *pid, const char *path,
		       const posix_spawn_file_actions_t *actions,
		       const posix_spawnattr_t *attr,
		       char *const argv[], char *const envp[]);
int __wrap_posix_spawn(pid_t *pid, const char *path,
		       const posix_spawn_file_actions_t *actions,
		       const posix_spawnattr_t *attr,
		       char *const argv[], char *const envp[]);

/* posix_spawn(3), with libfuse's fusermount3 swapped for the installed one. */
int __wrap_posix_spawn(pid_t *pid, const char *path,
		       const posix_spawn_file_actions_t *actions,
		       const posix_spawnattr_t *attr,
		       char *const argv[], char *const envp[])
{
	/*
	 * Root only: the installed copy is not setuid, so a user's mount
	 * needs the system's (setuid) fusermount3, which libfuse finds on
	 * $PATH when the compiled-in one is not there.
	 */
	if (!strcmp(path, VP_LIBFUSE_FUSERMOUNT) && geteuid() == 0 && access(VP_FUSERMOUNT, X_OK) == 0)
		path = VP_FUSERMOUNT;
	return __real_posix_spawn(pid, path, actions, attr, argv, envp);
}

#endif
