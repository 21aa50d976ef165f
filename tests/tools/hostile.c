/*
 * hostile: a hostile peer for the security tests (tests/integration/
 * test_security.py), written against libviper.a as an attacker on the
 * fabric network would write it.  Real libfabric endpoints, real wire
 * messages.
 *
 *   hostile inject LOCAL_IP HOST:PORT
 *	As a host that is not the producer: sends a consumer (or a producer)
 *	forged producer messages with peer id 0 -- OP unlink, rename, mkdir,
 *	symlink, an ANNOUNCE of version 1,000,000, a 16 TiB file, a
 *	HEARTBEAT -- plain, and as sealed garbage; then forged consumer
 *	messages (REFUSED, DONE, HEARTBEAT) for peer ids 1..4.
 *   hostile pose IP PORT HOST:PORT ID SECONDS
 *	From a dead consumer's own endpoint address (IP:PORT, free once it
 *	died): HEARTBEATs and DONEs as consumer ID, plain and sealed with a
 *	key of its own, 5 a second for SECONDS.
 *   hostile rma LOCAL_IP HOST:PORT OUT_FILE
 *	RMA reads of the peer's memory with no HELLO: keys 0..64, 64 random
 *	keys, at offsets 0 and 1 MiB.  Writes every byte a read returned to
 *	OUT_FILE; prints "rma_ok N".
 *   hostile badhello LOCAL_IP HOST:PORT
 *	HELLOs with endpoint names of 4, 15, 17 and 64 bytes, and one of the
 *	right length with a bad address family.
 *   hostile hellos LOCAL_IP HOST:PORT MODE SECONDS
 *	HELLOs for SECONDS: MODE rehello (its own name, 5 a second: each
 *	replaces its last handshake), tarpit (naming a TCP port of its own
 *	that accepts and never answers, once a second), hold (16 endpoints of
 *	its own, each saying HELLO again and again, plus 64 names on 16
 *	hosts that do not exist, 10 times a second), flood (one HELLO, then 64 KiB messages typed CHUNKS, as fast
 *	as the fabric takes them).
 *   hostile producer LISTEN_IP:PORT SECRET_FILE|- ATTACK
 *	A producer (it knows the secret, or there is none: "-") that serves
 *	the first consumer to say HELLO, then attacks it.  ATTACK: escape
 *	(symlinks out of the mount, then operations through them), sizes
 *	(chunk sizes not the consumer's, a 16 TiB file).  Ends with OP mkdir
 *	"marker" and keeps heartbeating until its stdin closes.
 *
 * Prints "sent N" (messages the fabric took) for the senders.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "../../engine/clock.h"
#include "../../engine/fabric.h"
#include "../../engine/proto.h"
#include "../../engine/sess.h"

static uint8_t buf[VP_FAB_MAX_MSG];
static struct vp_msg m;
static unsigned int sent;

struct inbox {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint8_t msg[VP_FAB_MAX_MSG];
	size_t len;
	vp_fab_addr src;
	int full;
};

static struct inbox in = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, { 0 }, 0, 0, 0 };

static void on_msg(void *arg, vp_fab_addr src, const void *msg, size_t len)
{
	(void)arg;
	pthread_mutex_lock(&in.lock);
	if (!in.full) {	/* one at a time; the rest are dropped (heartbeats) */
		memcpy(in.msg, msg, len);
		in.len = len;
		in.src = src;
		in.full = 1;
		pthread_cond_broadcast(&in.cond);
	}
	pthread_mutex_unlock(&in.lock);
}

/* The next message of one of the types wanted (0: any), within secs. */
static int recv_msg(struct vp_sess *s, int want, double secs, struct vp_msg *out,
		    vp_fab_addr *src)
{
	double until = vp_now() + secs;

	for (;;) {
		uint8_t plain[VP_FAB_MAX_MSG];
		const uint8_t *p = in.msg;
		ssize_t len;
		struct timespec ts;

		pthread_mutex_lock(&in.lock);
		vp_abstime(&ts, until);
		while (!in.full && pthread_cond_timedwait(&in.cond, &in.lock, &ts) == 0)
			;
		if (!in.full) {
			pthread_mutex_unlock(&in.lock);
			return -ETIMEDOUT;
		}
		len = (ssize_t)in.len;
		if (s && s->on && vp_sess_is_sealed(in.msg, in.len)) {
			len = vp_sess_open(s, in.msg, in.len, plain, sizeof(plain), NULL);
			p = plain;
		}
		*src = in.src;
		in.full = 0;
		pthread_mutex_unlock(&in.lock);
		if (len > 0 && vp_msg_decode(p, (size_t)len, out, NULL) == 0 &&
		    (!want || (int)out->type == want))
			return 0;
	}
}

static void send_plain(struct vp_fab *fab, vp_fab_addr to, struct vp_msg *msg)
{
	ssize_t n = vp_msg_encode(msg, buf, sizeof(buf));

	if (n < 0) {
		fprintf(stderr, "hostile: encode failed (%zd)\n", n);
		exit(1);
	}
	sent += vp_fab_send(fab, to, buf, (size_t)n, 5) == 0;
}

static void send_sealed(struct vp_fab *fab, vp_fab_addr to, struct vp_sess *s, struct vp_msg *msg)
{
	static uint8_t out[VP_FAB_MAX_MSG];
	ssize_t n;

	if (!s->on) {
		send_plain(fab, to, msg);
		return;
	}
	n = vp_msg_encode(msg, buf, sizeof(buf) - VP_SESS_OVERHEAD);
	if (n < 0 || (n = vp_sess_seal(s, buf, (size_t)n, out, sizeof(out))) < 0) {
		fprintf(stderr, "hostile: seal failed\n");
		exit(1);
	}
	sent += vp_fab_send(fab, to, out, (size_t)n, 5) == 0;
}

static struct vp_fab *open_at(const char *local, const char *service, int listen)
{
	char err[256];
	struct vp_fab *fab = vp_fab_open(NULL, local, service, listen ? VP_FAB_LISTEN : VP_FAB_LISTEN,
					 on_msg, NULL, err, sizeof(err));

	if (!fab) {
		fprintf(stderr, "hostile: %s\n", err);
		exit(1);
	}
	return fab;
}

static vp_fab_addr peer_at(struct vp_fab *fab, const char *hostport)
{
	char host[128], *colon;
	vp_fab_addr a;

	snprintf(host, sizeof(host), "%s", hostport);
	colon = strrchr(host, ':');
	if (!colon)
		exit(2);
	*colon = '\0';
	if (vp_fab_insert_host(fab, host, colon + 1, &a)) {
		fprintf(stderr, "hostile: cannot reach %s\n", hostport);
		exit(1);
	}
	return a;
}

static void op(struct vp_msg *msg, enum vp_op_kind kind, const char *path, const char *path2)
{
	memset(msg, 0, sizeof(*msg));
	msg->type = VP_MSG_OP;
	msg->u.op.kind = kind;
	msg->u.op.mode = 0755;
	snprintf(msg->u.op.path, sizeof(msg->u.op.path), "%s", path);
	snprintf(msg->u.op.path2, sizeof(msg->u.op.path2), "%s", path2 ? path2 : "");
}

/* An ANNOUNCE of size bytes in chunks of chunk, all holes unless ref is given (chunk 0). */
static void announce(struct vp_msg *msg, const char *path, uint64_t version, uint64_t size,
		     uint32_t chunk, const struct vp_chunk_ref *ref)
{
	uint64_t n = (size + chunk - 1) / chunk, hashes[1];

	memset(msg, 0, sizeof(*msg));
	msg->type = VP_MSG_ANNOUNCE;
	msg->u.announce.seq = version;
	msg->u.announce.version = version;
	msg->u.announce.size = size;
	msg->u.announce.mode = 0644;
	msg->u.announce.chunk_size = chunk;
	msg->u.announce.nchunks = (uint32_t)n;
	msg->u.announce.count = (uint32_t)(n < VP_PROTO_CHUNKS_PER_MSG ? n : VP_PROTO_CHUNKS_PER_MSG);
	snprintf(msg->u.announce.path, sizeof(msg->u.announce.path), "%s", path);
	if (ref)
		msg->u.announce.chunk[0] = *ref;
	hashes[0] = ref ? ref->hash : 0;
	if (n == 1)
		msg->u.announce.checksum = XXH3_64bits_withSeed(hashes, sizeof(hashes), size);
	else {
		uint64_t *all = calloc(n, sizeof(*all));

		msg->u.announce.checksum = XXH3_64bits_withSeed(all, n * sizeof(*all), size);
		free(all);
	}
}

static int cmd_inject(const char *local, const char *target)
{
	struct vp_fab *fab = open_at(local, "0", 1);
	vp_fab_addr to = peer_at(fab, target);
	static const char *const paths[] = { "victim.bin", "dir" };

	/* forged producer messages: peer id 0 */
	op(&m, VP_OP_UNLINK, paths[0], NULL);
	send_plain(fab, to, &m);
	op(&m, VP_OP_RENAME, paths[0], "renamed.bin");
	send_plain(fab, to, &m);
	op(&m, VP_OP_RMDIR, paths[1], NULL);
	send_plain(fab, to, &m);
	op(&m, VP_OP_MKDIR, "injected-dir", NULL);
	send_plain(fab, to, &m);
	op(&m, VP_OP_SYMLINK, "injected-link", "/etc");
	send_plain(fab, to, &m);
	announce(&m, paths[0], 1000000, 1u << 20, 1u << 20, NULL);
	send_plain(fab, to, &m);
	announce(&m, "huge.bin", 1000000, 1ULL << 44, 1u << 20, NULL);
	for (int i = 0; i < 4; i++)
		send_plain(fab, to, &m);
	memset(&m, 0, sizeof(m));
	m.type = VP_MSG_HEARTBEAT;
	send_plain(fab, to, &m);
	m.type = VP_MSG_SYNC_END;
	send_plain(fab, to, &m);
	/* sealed garbage: the sealed flag, random bytes */
	for (int i = 0; i < 8; i++) {
		ssize_t n;
		struct vp_sess fake = { 0 };
		uint8_t salt[16];

		RAND_bytes(salt, sizeof(salt));
		vp_sess_derive(&fake, salt, sizeof(salt), salt, sizeof(salt), "session", 1, 1);
		op(&m, VP_OP_UNLINK, paths[0], NULL);
		n = vp_msg_encode(&m, buf, sizeof(buf) - VP_SESS_OVERHEAD);
		{
			static uint8_t out[VP_FAB_MAX_MSG];

			n = vp_sess_seal(&fake, buf, (size_t)n, out, sizeof(out));
			sent += vp_fab_send(fab, to, out, (size_t)n, 5) == 0;
		}
	}
	/* forged consumer messages (to a producer): ids 1..4 */
	for (uint64_t id = 1; id <= 4; id++) {
		memset(&m, 0, sizeof(m));
		m.peer_id = id;
		m.type = VP_MSG_REFUSED;
		snprintf(m.u.refused.reason, sizeof(m.u.refused.reason), "forged");
		send_plain(fab, to, &m);
		memset(&m.u, 0, sizeof(m.u));
		m.type = VP_MSG_DONE;
		m.u.done.seq = 1000000;
		m.u.done.from_producer = 1ULL << 40;
		send_plain(fab, to, &m);
		m.type = VP_MSG_HEARTBEAT;
		send_plain(fab, to, &m);
	}
	printf("sent %u\n", sent);
	vp_fab_close(fab);
	return 0;
}

/*
 * pose: from a dead consumer's own address (ip, port), HEARTBEATs and
 * DONEs as consumer `id` to the producer at target, plain and sealed with
 * a key of our own, every 0.2 s for secs: none may keep it alive.
 */
static int cmd_pose(const char *ip, const char *port, const char *target, uint64_t id, double secs)
{
	struct vp_fab *fab = open_at(ip, port, 1);
	vp_fab_addr to = peer_at(fab, target);
	struct vp_sess fake = { 0 };
	uint8_t salt[16];
	double end = vp_now() + secs;

	RAND_bytes(salt, sizeof(salt));
	vp_sess_derive(&fake, salt, sizeof(salt), salt, sizeof(salt), "session", id, 0);
	while (vp_now() < end) {
		struct timespec ts = { 0, 200 * 1000 * 1000 };

		memset(&m, 0, sizeof(m));
		m.peer_id = id;
		m.type = VP_MSG_HEARTBEAT;
		send_plain(fab, to, &m);
		send_sealed(fab, to, &fake, &m);
		m.type = VP_MSG_DONE;
		m.u.done.seq = 1;
		send_sealed(fab, to, &fake, &m);
		nanosleep(&ts, NULL);
	}
	printf("sent %u\n", sent);
	vp_fab_close(fab);
	return 0;
}

static int cmd_rma(const char *local, const char *target, const char *outfile)
{
	struct vp_fab *fab = open_at(local, "0", 1);
	vp_fab_addr to = peer_at(fab, target);
	size_t len = 64u << 10;
	char *dst = aligned_alloc(4096, len);
	struct vp_fab_mr *mr;
	FILE *out = fopen(outfile, "we");
	unsigned int ok = 0, tried = 0;

	if (!dst || !out || vp_fab_mr_reg_local(fab, dst, len, &mr)) {
		fprintf(stderr, "hostile: setup failed\n");
		return 1;
	}
	for (int k = 0; k < 64 + 1 + 64; k++) {
		uint64_t key = (uint64_t)k;

		if (k > 64)
			RAND_bytes((unsigned char *)&key, sizeof(key));
		for (int off = 0; off < 2; off++) {
			struct vp_fab_read_req req = { .mr = mr, .local = dst, .len = len,
						       .remote_addr = (uint64_t)off << 20, .key = key };

			memset(dst, 0, len);
			tried++;
			if (vp_fab_read(fab, to, &req, 1, 1, 2) == 0) {
				ok++;
				fwrite(dst, 1, len, out);
			}
		}
	}
	fclose(out);
	printf("rma_tried %u\nrma_ok %u\n", tried, ok);
	vp_fab_mr_close(mr);
	vp_fab_close(fab);
	free(dst);
	return 0;
}

static int cmd_badhello(const char *local, const char *target)
{
	struct vp_fab *fab = open_at(local, "0", 1);
	vp_fab_addr to = peer_at(fab, target);
	static const unsigned int lens[] = { 4, 15, 17, 64 };
	uint8_t name[VP_FAB_NAME_MAX];
	int n = vp_fab_name(fab, name, sizeof(name));

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		memset(&m, 0, sizeof(m));
		m.type = VP_MSG_HELLO;
		m.u.hello.name_len = (uint16_t)lens[i];
		memcpy(m.u.hello.name, name, n > 0 ? (size_t)n : 0);
		send_plain(fab, to, &m);
	}
	if (n > 0) {	/* the right length, a bad family */
		memset(&m, 0, sizeof(m));
		m.type = VP_MSG_HELLO;
		m.u.hello.name_len = (uint16_t)n;
		memcpy(m.u.hello.name, name, (size_t)n);
		m.u.hello.name[0] ^= 0x7f;
		send_plain(fab, to, &m);
	}
	printf("sent %u\n", sent);
	vp_fab_close(fab);
	return 0;
}

static int tarpit_fd;

static void *tarpit(void *arg)
{
	(void)arg;
	for (;;)
		if (accept(tarpit_fd, NULL, NULL) < 0)
			return NULL;	/* accepted, and never answered */
}

static void hello_named(struct vp_fab *fab, vp_fab_addr to, const void *name, size_t len)
{
	memset(&m, 0, sizeof(m));
	m.type = VP_MSG_HELLO;
	RAND_bytes(m.u.hello.nonce, VP_PROTO_NONCE);
	m.u.hello.name_len = (uint16_t)len;
	memcpy(m.u.hello.name, name, len);
	send_plain(fab, to, &m);
}

static int cmd_hellos(const char *local, const char *target, const char *mode, double secs)
{
	struct vp_fab *fab = open_at(local, "0", 1);
	vp_fab_addr to = peer_at(fab, target);
	double until = vp_now() + secs;
	uint8_t name[VP_FAB_NAME_MAX];
	int n = vp_fab_name(fab, name, sizeof(name));

	if (n <= 0)
		return 1;
	if (!strcmp(mode, "rehello")) {
		while (vp_now() < until) {
			hello_named(fab, to, name, (size_t)n);
			usleep(200000);
		}
	} else if (!strcmp(mode, "tarpit")) {
		struct sockaddr_in sa = { .sin_family = AF_INET };
		socklen_t sl = sizeof(sa);
		pthread_t t;

		tarpit_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		inet_pton(AF_INET, local, &sa.sin_addr);
		if (tarpit_fd < 0 || bind(tarpit_fd, (struct sockaddr *)&sa, sizeof(sa)) ||
		    listen(tarpit_fd, 128) || getsockname(tarpit_fd, (struct sockaddr *)&sa, &sl) ||
		    pthread_create(&t, NULL, tarpit, NULL))
			return 1;
		while (vp_now() < until) {
			hello_named(fab, to, &sa, sizeof(sa));
			sleep(1);
		}
	} else if (!strcmp(mode, "hold")) {
		enum { NEP = 16 };	/* 4 times what one host may hold */
		static struct vp_fab *f[NEP];
		static vp_fab_addr t[NEP];

		for (int i = 0; i < NEP; i++) {
			f[i] = open_at(local, "0", 1);
			t[i] = peer_at(f[i], target);
		}
		while (vp_now() < until) {
			for (int i = 0; i < 64; i++) {
				uint8_t own[VP_FAB_NAME_MAX];
				int len = i < NEP ? vp_fab_name(f[i], own, sizeof(own)) : 0;
				struct sockaddr_in sa = { .sin_family = AF_INET,
							  .sin_port = htons((uint16_t)(40000 + i)) };

				if (len > 0)
					hello_named(f[i], t[i], own, (size_t)len);
				/* 16 hosts of the subnet, 4 ports each (what one host may hold) */
				inet_pton(AF_INET, local, &sa.sin_addr);
				sa.sin_addr.s_addr = htonl((ntohl(sa.sin_addr.s_addr) & ~0xffu) |
							   (uint32_t)(100 + i / 4));
				hello_named(fab, to, &sa, sizeof(sa));
			}
			usleep(100000);
		}
		for (int i = 0; i < NEP; i++)
			vp_fab_close(f[i]);
	} else if (!strcmp(mode, "flood")) {
		hello_named(fab, to, name, (size_t)n);
		usleep(300000);
		memset(buf, 0, sizeof(buf));
		memcpy(buf, "VPR1", 4);
		buf[4] = VP_PROTO_VERSION;
		buf[6] = VP_MSG_CHUNKS;		/* the type; the rest junk */
		while (vp_now() < until)
			sent += vp_fab_send(fab, to, buf, VP_FAB_MAX_MSG, 5) == 0;
	} else {
		return 2;
	}
	printf("sent %u\n", sent);
	vp_fab_close(fab);
	return 0;
}

static int cmd_producer(const char *listen, const char *secret_file, const char *attack)
{
	char host[128], *colon;
	uint8_t secret[512], nonce_c[VP_PROTO_NONCE], nonce_p[VP_PROTO_NONCE];
	size_t slen = 0;
	struct vp_fab *fab;
	struct vp_sess sess = { 0 };
	struct vp_msg *got = calloc(1, sizeof(*got));
	vp_fab_addr to, src;
	char *mem = aligned_alloc(4096, 8u << 20);
	struct vp_fab_mr *mr;
	struct vp_chunk_ref ref = { 0 };
	const uint64_t id = 1;

	if (strcmp(secret_file, "-")) {
		FILE *f = fopen(secret_file, "re");

		if (!f)
			return 1;
		slen = fread(secret, 1, sizeof(secret), f);
		fclose(f);
		while (slen && (secret[slen - 1] == '\n' || secret[slen - 1] == '\r'))
			slen--;
		{
			uint8_t key[VP_SESS_KEY];

			if (vp_sess_stretch(secret, slen, key))	/* as the daemons do */
				return 1;
			memcpy(secret, key, sizeof(key));
			slen = VP_SESS_KEY;
		}
	}
	snprintf(host, sizeof(host), "%s", listen);
	colon = strrchr(host, ':');
	if (!colon || !got || !mem)
		return 2;
	*colon = '\0';
	fab = open_at(host, colon + 1, 1);
	if (recv_msg(NULL, VP_MSG_HELLO, 60, got, &src) ||
	    vp_fab_insert_name(fab, got->u.hello.name, got->u.hello.name_len, &to)) {
		fprintf(stderr, "hostile: no consumer said HELLO\n");
		return 1;
	}
	memcpy(nonce_c, got->u.hello.nonce, VP_PROTO_NONCE);
	RAND_bytes(nonce_p, sizeof(nonce_p));
	memset(&m, 0, sizeof(m));
	m.type = VP_MSG_CHALLENGE;
	m.u.challenge.assigned_id = id;
	memcpy(m.u.challenge.nonce, nonce_p, VP_PROTO_NONCE);
	vp_sess_handshake_mac(secret, slen, "VPR1-P", nonce_c, nonce_p, id, m.u.challenge.mac);
	send_plain(fab, to, &m);
	if (recv_msg(NULL, VP_MSG_AUTH, 30, got, &src)) {
		fprintf(stderr, "hostile: no AUTH\n");
		return 1;
	}
	if (slen) {
		uint8_t salt[2 * VP_PROTO_NONCE];

		memcpy(salt, nonce_c, VP_PROTO_NONCE);
		memcpy(salt + VP_PROTO_NONCE, nonce_p, VP_PROTO_NONCE);
		vp_sess_derive(&sess, secret, slen, salt, sizeof(salt), "session", id, 1);
	}
	memset(&m, 0, sizeof(m));
	m.type = VP_MSG_WELCOME;
	send_sealed(fab, to, &sess, &m);
	memset(&m, 0, sizeof(m));
	m.type = VP_MSG_SYNC_END;
	send_sealed(fab, to, &sess, &m);

	/* memory the consumer may read: 8 MiB of 'E' */
	memset(mem, 'E', 8u << 20);
	if (vp_fab_mr_reg(fab, mem, 8u << 20, &mr, &ref.key, &ref.addr))
		return 1;
	if (!strcmp(attack, "escape")) {
		const char *outside = getenv("HOSTILE_OUTSIDE");

		if (!outside)
			return 2;
		/* a symlink as a directory on the way, pointing out (absolute and relative) */
		op(&m, VP_OP_SYMLINK, "esc", outside);
		send_sealed(fab, to, &sess, &m);
		op(&m, VP_OP_MKDIR, "d", NULL);
		send_sealed(fab, to, &sess, &m);
		op(&m, VP_OP_SYMLINK, "d/up", "../..");
		send_sealed(fab, to, &sess, &m);
		for (int i = 0; i < 2; i++) {
			const char *pre = i ? "d/up/outside" : "esc";
			char a[256], b[256];

			snprintf(a, sizeof(a), "%s/victim.txt", pre);
			op(&m, VP_OP_UNLINK, a, NULL);
			send_sealed(fab, to, &sess, &m);
			snprintf(a, sizeof(a), "%s/subdir", pre);
			op(&m, VP_OP_RMDIR, a, NULL);
			send_sealed(fab, to, &sess, &m);
			snprintf(a, sizeof(a), "%s/newdir%d", pre, i);
			op(&m, VP_OP_MKDIR, a, NULL);
			send_sealed(fab, to, &sess, &m);
			snprintf(a, sizeof(a), "%s/new/deep%d", pre, i);	/* mkdir -p on the way */
			op(&m, VP_OP_MKDIR, a, NULL);
			send_sealed(fab, to, &sess, &m);
			snprintf(a, sizeof(a), "%s/victim.txt", pre);
			snprintf(b, sizeof(b), "%s/subdir/moved.txt", pre);
			op(&m, VP_OP_RENAME, a, b);
			send_sealed(fab, to, &sess, &m);
			op(&m, VP_OP_RENAME, a, "stolen.txt");	/* out of the host into the mount */
			send_sealed(fab, to, &sess, &m);
			snprintf(a, sizeof(a), "%s/planted", pre);
			op(&m, VP_OP_SYMLINK, a, "/etc/passwd");
			send_sealed(fab, to, &sess, &m);
			ref.hash = XXH3_64bits(mem, 10);
			snprintf(a, sizeof(a), "%s/new%d.bin", pre, i);
			announce(&m, a, 7 + (uint64_t)i, 10, 1u << 20, &ref);
			send_sealed(fab, to, &sess, &m);
		}
		/* a file replaced through a symlink at its own name */
		{
			char t[512];

			snprintf(t, sizeof(t), "%s/target.txt", outside);
			op(&m, VP_OP_SYMLINK, "model.pt", t);
			send_sealed(fab, to, &sess, &m);
		}
		ref.hash = XXH3_64bits(mem, 10);
		announce(&m, "model.pt", 9, 10, 1u << 20, &ref);
		send_sealed(fab, to, &sess, &m);
	} else if (!strcmp(attack, "sizes")) {
		ref.hash = XXH3_64bits(mem, 8u << 20);
		announce(&m, "big-chunk.bin", 11, 8u << 20, 8u << 20, &ref);	/* 8 MiB chunks */
		send_sealed(fab, to, &sess, &m);
		ref.hash = XXH3_64bits(mem, 4096);
		announce(&m, "small-chunk.bin", 12, 4096, 4096, &ref);		/* 4 KiB chunks */
		send_sealed(fab, to, &sess, &m);
		announce(&m, "huge.bin", 13, 1ULL << 44, 1u << 20, NULL);	/* 16 TiB of holes */
		send_sealed(fab, to, &sess, &m);
		ref.hash = XXH3_64bits(mem, 1000);
		announce(&m, "ok.bin", 14, 1000, 1u << 20, &ref);		/* still works */
		send_sealed(fab, to, &sess, &m);
	} else {
		fprintf(stderr, "hostile: unknown attack '%s'\n", attack);
		return 2;
	}
	op(&m, VP_OP_MKDIR, "marker", NULL);
	send_sealed(fab, to, &sess, &m);
	printf("sent %u\n", sent);
	fflush(stdout);
	/* heartbeats (and DONEs read and dropped) until stdin closes */
	for (;;) {
		struct pollfd p = { .fd = 0, .events = POLLIN };
		char c;

		memset(&m, 0, sizeof(m));
		m.type = VP_MSG_HEARTBEAT;
		send_sealed(fab, to, &sess, &m);
		if (poll(&p, 1, 1000) > 0 && read(0, &c, 1) <= 0)
			break;
		pthread_mutex_lock(&in.lock);
		in.full = 0;
		pthread_mutex_unlock(&in.lock);
	}
	vp_fab_mr_close(mr);
	vp_fab_close(fab);
	free(mem);
	free(got);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	vp_cond_init_monotonic(&in.cond);	/* recv_msg's deadlines are monotonic */
	if (argc == 4 && !strcmp(argv[1], "inject"))
		return cmd_inject(argv[2], argv[3]);
	if (argc == 7 && !strcmp(argv[1], "pose"))
		return cmd_pose(argv[2], argv[3], argv[4], strtoull(argv[5], NULL, 10), atof(argv[6]));
	if (argc == 5 && !strcmp(argv[1], "rma"))
		return cmd_rma(argv[2], argv[3], argv[4]);
	if (argc == 4 && !strcmp(argv[1], "badhello"))
		return cmd_badhello(argv[2], argv[3]);
	if (argc == 6 && !strcmp(argv[1], "hellos"))
		return cmd_hellos(argv[2], argv[3], argv[4], atof(argv[5]));
	if (argc == 5 && !strcmp(argv[1], "producer"))
		return cmd_producer(argv[2], argv[3], argv[4]);
	fprintf(stderr, "usage: hostile inject|pose|rma|badhello|producer ... (see the source)\n");
	return 2;
}
