/*
 * fabbw: raw libfabric RMA-read bandwidth between two nodes, with the
 * transport viperfs uses (engine/fabric.h): the baseline of make bench.
 *
 *   fabbw serve ADDR:PORT SIZE          registers SIZE bytes, answers one reader
 *   fabbw read ADDR:PORT LOCAL_IP SIZE  reads them in 1 MiB pieces, 8 in flight;
 *                                       prints seconds and GB/s
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../engine/fabric.h"

struct box {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	char msg[256];
	size_t len;
	int got;
};

static void on_msg(void *arg, vp_fab_addr src, const void *msg, size_t len)
{
	struct box *b = arg;

	(void)src;
	pthread_mutex_lock(&b->lock);
	if (len > sizeof(b->msg))
		len = sizeof(b->msg);
	memcpy(b->msg, msg, len);
	b->len = len;
	b->got++;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
}

static void wait_msg(struct box *b, int n)
{
	pthread_mutex_lock(&b->lock);
	while (b->got < n)
		pthread_cond_wait(&b->cond, &b->lock);
	pthread_mutex_unlock(&b->lock);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static struct box box = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, "", 0, 0 };
	char err[256], host[128], *colon;
	struct vp_fab *fab;
	struct vp_fab_mr *mr;
	uint64_t key, raddr, size;
	vp_fab_addr peer;
	char *buf;

	if (argc < 4) {
		fprintf(stderr, "usage: fabbw serve ADDR:PORT SIZE | fabbw read ADDR:PORT LOCAL_IP SIZE\n");
		return 2;
	}
	snprintf(host, sizeof(host), "%s", argv[2]);
	colon = strrchr(host, ':');
	if (!colon)
		return 2;
	*colon = '\0';
	size = strtoull(argv[argc - 1], NULL, 10);
	buf = aligned_alloc(1 << 21, (size + (1 << 21) - 1) & ~((1ULL << 21) - 1));
	memset(buf, 1, size);	/* first touch before timing */
	if (!strcmp(argv[1], "serve")) {
		fab = vp_fab_open(NULL, host, colon + 1, 1, on_msg, &box, err, sizeof(err));
		if (!fab || vp_fab_mr_reg(fab, buf, size, &mr, &key, &raddr)) {
			fprintf(stderr, "fabbw: %s\n", err);
			return 1;
		}
		printf("ready\n");
		fflush(stdout);
		wait_msg(&box, 1);	/* the reader's name */
		if (vp_fab_insert_name(fab, box.msg, box.len, &peer))
			return 1;
		{
			uint64_t reply[2] = { key, raddr };

			vp_fab_send(fab, peer, reply, sizeof(reply), 10);
		}
		wait_msg(&box, 2);	/* "done" */
		return 0;
	}
	fab = vp_fab_open(NULL, argv[3], "0", 1, on_msg, &box, err, sizeof(err));
	if (!fab || vp_fab_insert_host(fab, host, colon + 1, &peer) ||
	    vp_fab_mr_reg(fab, buf, size, &mr, NULL, NULL)) {
		fprintf(stderr, "fabbw: %s\n", fab ? "cannot reach the server" : err);
		return 1;
	}
	{
		char name[VP_FAB_NAME_MAX];
		int n = vp_fab_name(fab, name, sizeof(name));
		size_t np = (size + (1 << 20) - 1) >> 20;
		struct vp_fab_read_req *reqs = calloc(np, sizeof(*reqs));
		uint64_t k, ra;
		double t0, t;

		vp_fab_send(fab, peer, name, (size_t)n, 10);
		wait_msg(&box, 1);
		memcpy(&k, box.msg, 8);
		memcpy(&ra, box.msg + 8, 8);
		for (size_t i = 0; i < np; i++) {
			reqs[i].mr = mr;
			reqs[i].local = buf + (i << 20);
			reqs[i].len = i == np - 1 ? size - (i << 20) : 1u << 20;
			reqs[i].remote_addr = ra + (i << 20);
			reqs[i].key = k;
		}
		t0 = now();
		if (vp_fab_read(fab, peer, reqs, np, 8, 120)) {
			fprintf(stderr, "fabbw: read failed\n");
			return 1;
		}
		t = now() - t0;
		vp_fab_send(fab, peer, "done", 4, 10);
		printf("%.6f %.3f\n", t, (double)size / t / 1e9);
	}
	return 0;
}
