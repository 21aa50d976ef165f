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

/* A parsed JSON value (vpctl_json.c). */
enum vpctl_json_type { VPCTL_JSON_NULL, VPCTL_JSON_BOOL, VPCTL_JSON_NUMBER,
		       VPCTL_JSON_STRING, VPCTL_JSON_ARRAY, VPCTL_JSON_OBJECT };
struct vpctl_json {
	enum vpctl_json_type type;
	char *key;			/* in an object */
	char *str;
	double num;
	struct vpctl_json *child;	/* arrays, objects */
	struct vpctl_json *next;
	unsigned int count;
};

/* Parses text; returns a new tree (free with vpctl_json_free) or NULL. */
struct vpctl_json *vpctl_json_parse(const char *text);
void vpctl_json_free(struct vpctl_json *j);
/* Looks up "a.b.c" in nested objects; NULL if missing. */
const struct vpctl_json *vpctl_json_get(const struct vpctl_json *j, const char *path);
/* The number (or bool) at path, 0 if missing. */
double vpctl_json_num(const struct vpctl_json *j, const char *path);
/* The string at path, "" if missing. */
const char *vpctl_json_str(const struct vpctl_json *j, const char *path);

#endif
