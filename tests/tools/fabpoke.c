/*
 * fabpoke: a test client that sends malformed replication messages to a
 * producer over a real libfabric endpoint (tests/integration).
 *
 *   fabpoke HOST:PORT LOCAL_IP
 *
 * Sends: garbage bytes, a bad magic, a truncated header, an ANNOUNCE with
 * "../" in its path, one whose size does not match its chunks, and an OP
 * with an absolute path.  Prints how many were sent.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/fabric.h"
#include "../../engine/proto.h"

static uint8_t buf[VP_FAB_MAX_MSG];

/* Encodes a valid message, then lets the caller damage it. */
static size_t encode(struct vp_msg *m)
{
	ssize_t n = vp_msg_encode(m, buf, sizeof(buf));

	if (n < 0) {
		fprintf(stderr, "fabpoke: encode failed\n");
		exit(1);
	}
	return (size_t)n;
}

int main(int argc, char **argv)
{
	char err[256], host[128], *colon;
	struct vp_fab *fab;
	vp_fab_addr to;
	static struct vp_msg m;
	unsigned int sent = 0;
	size_t n;
	uint8_t *p;

	if (argc != 3) {
		fprintf(stderr, "usage: fabpoke HOST:PORT LOCAL_IP\n");
		return 2;
	}
	snprintf(host, sizeof(host), "%s", argv[1]);
	colon = strrchr(host, ':');
	if (!colon)
		return 2;
	*colon = '\0';
	fab = vp_fab_open(NULL, argv[2], "0", 1, NULL, NULL, err, sizeof(err));
	if (!fab || vp_fab_insert_host(fab, host, colon + 1, &to)) {
		fprintf(stderr, "fabpoke: %s\n", fab ? "cannot reach the producer" : err);
		return 1;
	}
	/* 1: garbage */
	memset(buf, 0xa5, 100);
	sent += vp_fab_send(fab, to, buf, 100, 5) == 0;
	/* 2: a bad magic */
	m.type = VP_MSG_HEARTBEAT;
	n = encode(&m);
	buf[0] ^= 0xff;
	sent += vp_fab_send(fab, to, buf, n, 5) == 0;
	/* 3: a truncated header */
	sent += vp_fab_send(fab, to, buf, 7, 5) == 0;
	/* 4: an ANNOUNCE whose path climbs out */
	memset(&m, 0, sizeof(m));
	m.type = VP_MSG_ANNOUNCE;
	m.u.announce.size = 10;
	m.u.announce.chunk_size = 1u << 20;
	m.u.announce.nchunks = 1;
	m.u.announce.count = 1;
	strcpy(m.u.announce.path, "abcd");
	n = encode(&m);
	p = memmem(buf, n, "abcd", 4);
	memcpy(p, "../x", 4);
	sent += vp_fab_send(fab, to, buf, n, 5) == 0;
	/* 5: a size that does not match the chunk count */
	memcpy(p, "abcd", 4);
	buf[VP_PROTO_HDR + 16 + 3] = 0x40;
	sent += vp_fab_send(fab, to, buf, n, 5) == 0;
	/* 6: an OP on an absolute path */
	memset(&m, 0, sizeof(m));
	m.type = VP_MSG_OP;
	m.u.op.kind = VP_OP_UNLINK;
	strcpy(m.u.op.path, "xetc/passwd");
	n = encode(&m);
	p = memmem(buf, n, "xetc", 4);
	p[0] = '/';
	sent += vp_fab_send(fab, to, buf, n, 5) == 0;
	printf("%u\n", sent);
	vp_fab_close(fab);
	return sent == 6 ? 0 : 1;
}
