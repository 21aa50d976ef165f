/* vpctl: what viperctl's source files share. */
#ifndef VPCTL_H
#define VPCTL_H

/* viperctl plan ...; returns the exit status. */
int vpctl_plan(int argc, char **argv);

/*
 * Reads the producer's measured checkpoint stall and the transfer time
 * (commit to on-PFS) from the daemon of mount mnt.  Returns 0 or -1 with
 * a message printed.
 */
int vpctl_measured_times(const char *mnt, double *t_ckpt, double *t_load);

#endif
