#define _GNU_SOURCE
/* Unit tests: the replication wire codec and its validation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#define _GNU_SOURCE
#include <string.h>

#include "../../engine/proto.h"

static uint8_t buf[64 << 10];

static struct vp_msg *msg_new(enum vp_msg_type t)
{
	struct vp_msg *m = calloc(1, sizeof(*m));

	m->type = t;
	m->peer_id = 42;
	return m;
}

static struct vp_msg *roundtrip(const struct vp_msg *m)
{
	struct vp_msg *out = calloc(1, sizeof(*out));
	const char *why = NULL;
	ssize_t n = vp_msg_encode(m, buf, sizeof(buf));

	assert_true(n >= VP_PROTO_HDR);
	assert_int_equal(vp_msg_peek_type(buf, (size_t)n), m->type);	/* routing a raw message */
	assert_int_equal(vp_msg_peek_type(buf, VP_PROTO_HDR - 1), -1);
	if (vp_msg_decode(buf, (size_t)n, out, &why))
		fail_msg("decode of %s: %s", vp_msg_type_name(m->type), why);
	assert_int_equal(out->type, m->type);
	assert_int_equal(out->peer_id, 42);
	return out;
}

static void test_roundtrips(void **state)
{
	struct vp_msg *m, *d;

	(void)state;
	m = msg_new(VP_MSG_ANNOUNCE);
	m->u.announce.seq = 7;
	m->u.announce.version = 3;
	m->u.announce.size = 3 * (1u << 20) + 5;
	m->u.announce.checksum = 0x1234567890abcdefULL;
	m->u.announce.mode = 0644;
	m->u.announce.mtime_ns = -5;
	m->u.announce.chunk_size = 1u << 20;
	m->u.announce.nchunks = 4;
	m->u.announce.first = 1;
	m->u.announce.count = 3;
	strcpy(m->u.announce.path, "run/ckpt-1/model.pt");
	for (int i = 0; i < 3; i++) {
		m->u.announce.chunk[i].addr = 0x7f0000000000ULL + (uint64_t)i;
		m->u.announce.chunk[i].key = (uint64_t)i * 11;
		m->u.announce.chunk[i].hash = i ? 0x9e3779b97f4a7c15ULL * (uint64_t)i : 0;
	}
	d = roundtrip(m);
	assert_true(d->u.announce.chunk[2].hash == 0x9e3779b97f4a7c15ULL * 2);
	assert_int_equal(d->u.announce.size, m->u.announce.size);
	assert_int_equal(d->u.announce.mtime_ns, -5);
	assert_string_equal(d->u.announce.path, "run/ckpt-1/model.pt");
	assert_int_equal(d->u.announce.chunk[2].addr, 0x7f0000000002ULL);
	assert_int_equal(d->u.announce.chunk[2].key, 22);
	free(d);

	/* a preview covers whole chunks, and unknown flags are refused */
	m->u.announce.flags = VP_ANNOUNCE_PREVIEW;
	assert_true(vp_msg_encode(m, buf, sizeof(buf)) < 0);	/* size is not whole chunks */
	m->u.announce.size = 4u << 20;
	d = roundtrip(m);
	assert_int_equal(d->u.announce.flags, VP_ANNOUNCE_PREVIEW);
	free(d);
	m->u.announce.flags = VP_ANNOUNCE_PREVIEW | VP_ANNOUNCE_RELAY;
	d = roundtrip(m);
	assert_int_equal(d->u.announce.flags, VP_ANNOUNCE_PREVIEW | VP_ANNOUNCE_RELAY);
	free(d);
	m->u.announce.flags = VP_ANNOUNCE_RECOVER;
	m->u.announce.epoch = 1796239697263800879ULL;
	d = roundtrip(m);
	assert_int_equal(d->u.announce.flags, VP_ANNOUNCE_RECOVER);
	assert_true(d->u.announce.epoch == 1796239697263800879ULL);
	free(d);
	m->u.announce.flags = 8;
	assert_true(vp_msg_encode(m, buf, sizeof(buf)) < 0);
	m->u.announce.flags = 0;

	/* a hole (key 0) that claims a hash is a forged list */
	m->u.announce.chunk[0].hash = 1;
	{
		struct vp_msg *out = calloc(1, sizeof(*out));
		const char *why = NULL;
		ssize_t n = vp_msg_encode(m, buf, sizeof(buf));

		assert_true(n > 0);
		assert_int_equal(vp_msg_decode(buf, (size_t)n, out, &why), -EBADMSG);
		assert_string_equal(why, "a hole with a hash");
		free(out);
	}
	free(m);

	m = msg_new(VP_MSG_OP);
	m->u.op.kind = VP_OP_SYMLINK;
	strcpy(m->u.op.path, "latest");
	strcpy(m->u.op.path2, "../elsewhere/x");	/* a link's target is its content */
	d = roundtrip(m);
	assert_string_equal(d->u.op.path2, "../elsewhere/x");
	free(m);
	free(d);

	/* a KEEP says which version the PFS has, and of which run */
	m = msg_new(VP_MSG_OP);
	m->u.op.kind = VP_OP_KEEP;
	strcpy(m->u.op.path, "model.pt");
	m->u.op.version = 41;
	m->u.op.epoch = 7;
	d = roundtrip(m);
	assert_int_equal(d->u.op.version, 41);
	assert_int_equal(d->u.op.epoch, 7);
	free(m);
	free(d);

	/* WELCOME: the producer's run; DONE AHEAD: the consumer's later version */
	m = msg_new(VP_MSG_WELCOME);
	m->u.welcome.epoch = 99;
	d = roundtrip(m);
	assert_int_equal(d->u.welcome.epoch, 99);
	free(m);
	free(d);
	m = msg_new(VP_MSG_DONE);
	m->u.done.seq = 3;
	m->u.done.version = 2;
	m->u.done.epoch = 98;
	m->u.done.status = VP_DONE_AHEAD;
	d = roundtrip(m);
	assert_int_equal(d->u.done.status, VP_DONE_AHEAD);
	assert_int_equal(d->u.done.version, 2);
	assert_int_equal(d->u.done.epoch, 98);
	free(m);
	free(d);

	m = msg_new(VP_MSG_HELLO);
	memset(m->u.hello.nonce, 9, VP_PROTO_NONCE);
	m->u.hello.name_len = 16;
	memset(m->u.hello.name, 3, 16);
	d = roundtrip(m);
	assert_memory_equal(d->u.hello.name, m->u.hello.name, 16);
	free(m);
	free(d);

	m = msg_new(VP_MSG_REFUSED);
	strcpy(m->u.refused.reason, "bad secret");
	d = roundtrip(m);
	assert_string_equal(d->u.refused.reason, "bad secret");
	free(m);
	free(d);
}

/* Encodes m, lets mutate() change the bytes, and expects the decoder to refuse them with want. */
static void expect_refused_msg(const struct vp_msg *m, void (*mutate)(uint8_t *b, size_t n),
			       const char *want)
{
	struct vp_msg *out = calloc(1, sizeof(*out));
	const char *why = NULL;
	ssize_t n = vp_msg_encode(m, buf, sizeof(buf));

	assert_true(n > 0);
	mutate(buf, (size_t)n);
	assert_int_equal(vp_msg_decode(buf, (size_t)n, out, &why), -EBADMSG);
	assert_string_equal(why, want);
	free(out);
}

/* the first offer's index (payload: seq 8, nchunks 4, flags 4, count 4) */
static void m_offer_idx(uint8_t *b, size_t n) { (void)n; b[VP_PROTO_HDR + 20] = 9; }
static void m_offer_key(uint8_t *b, size_t n) { (void)n; memset(b + VP_PROTO_HDR + 32, 0, 8); }
static void m_chunks_flags(uint8_t *b, size_t n) { (void)n; b[VP_PROTO_HDR + 12] = 6; }
/* TOPO: parent id 8, name length 2, name, then the child count */
static void m_topo_count(uint8_t *b, size_t n) { (void)n; b[VP_PROTO_HDR + 8 + 2 + 5 + VP_PROTO_EDGE_KEY] = 9; }
static void m_topo_noname(uint8_t *b, size_t n)
{
	(void)n;
	b[VP_PROTO_HDR] = 0;	/* parent id 5 -> 0, yet it has a name */
}

static void test_relay_messages(void **state)
{
	struct vp_msg *m, *d;

	(void)state;
	m = msg_new(VP_MSG_TOPO);
	m->u.topo.parent.id = 5;
	m->u.topo.parent.name_len = 5;
	memcpy(m->u.topo.parent.name, "abcde", 5);
	memset(m->u.topo.parent.key, 0x42, VP_PROTO_EDGE_KEY);
	m->u.topo.nchildren = 2;
	for (int i = 0; i < 2; i++) {
		m->u.topo.child[i].id = 10 + (uint64_t)i;
		m->u.topo.child[i].name_len = 16;
		memset(m->u.topo.child[i].name, 'a' + i, 16);
	}
	d = roundtrip(m);
	assert_int_equal(d->u.topo.parent.id, 5);
	assert_memory_equal(d->u.topo.parent.name, "abcde", 5);
	assert_memory_equal(d->u.topo.parent.key, m->u.topo.parent.key, VP_PROTO_EDGE_KEY);
	assert_int_equal(d->u.topo.nchildren, 2);
	assert_int_equal(d->u.topo.child[1].id, 11);
	assert_memory_equal(d->u.topo.child[1].name, m->u.topo.child[1].name, 16);
	free(d);
	expect_refused_msg(m, m_topo_count, "too many relay children");
	expect_refused_msg(m, m_topo_noname, "a relay node without a name, or a name without a node");
	/* the encoder refuses the same */
	m->u.topo.nchildren = VP_PROTO_MAX_CHILDREN + 1;
	assert_true(vp_msg_encode(m, buf, sizeof(buf)) < 0);
	m->u.topo.nchildren = 1;
	m->u.topo.child[0].id = 0;
	assert_true(vp_msg_encode(m, buf, sizeof(buf)) < 0);
	/* no parent, no children: a consumer the producer serves itself */
	memset(&m->u.topo, 0, sizeof(m->u.topo));
	d = roundtrip(m);
	assert_int_equal(d->u.topo.parent.id, 0);
	assert_int_equal(d->u.topo.nchildren, 0);
	free(d);
	free(m);

	m = msg_new(VP_MSG_CHUNKS);
	m->u.chunks.seq = 77;
	m->u.chunks.nchunks = 4;
	m->u.chunks.flags = VP_CHUNKS_LAST;
	m->u.chunks.count = 2;
	m->u.chunks.chunk[0] = (struct vp_chunk_offer){ .idx = 3, .addr = 0x1000, .key = 7 };
	m->u.chunks.chunk[1] = (struct vp_chunk_offer){ .idx = 0, .addr = 0x2000, .key = 8 };
	d = roundtrip(m);
	assert_int_equal(d->u.chunks.seq, 77);
	assert_int_equal(d->u.chunks.count, 2);
	assert_int_equal(d->u.chunks.flags, VP_CHUNKS_LAST);
	assert_int_equal(d->u.chunks.chunk[0].idx, 3);
	assert_int_equal(d->u.chunks.chunk[1].addr, 0x2000);
	assert_int_equal(d->u.chunks.chunk[1].key, 8);
	free(d);
	expect_refused_msg(m, m_offer_idx, "chunk index out of bounds");
	expect_refused_msg(m, m_offer_key, "an offered chunk without a key");
	expect_refused_msg(m, m_chunks_flags, "unknown chunks flags");
	m->u.chunks.chunk[0].idx = 4;		/* past nchunks */
	assert_true(vp_msg_encode(m, buf, sizeof(buf)) < 0);
	free(m);

	m = msg_new(VP_MSG_RELAY_DONE);
	m->u.relay_done.seq = 1234;
	d = roundtrip(m);
	assert_int_equal(d->u.relay_done.seq, 1234);
	assert_string_equal(vp_msg_type_name(VP_MSG_RELAY_DONE), "RELAY_DONE");
	free(d);
	free(m);
}

static void test_path_rules(void **state)
{
	(void)state;
	assert_int_equal(vp_proto_check_path("a/b/c.pt"), 0);
	assert_int_equal(vp_proto_check_path("..hidden/x"), 0);
	assert_int_equal(vp_proto_check_path(""), -EINVAL);
	assert_int_equal(vp_proto_check_path("/etc/passwd"), -EINVAL);
	assert_int_equal(vp_proto_check_path("a/../../etc"), -EINVAL);
	assert_int_equal(vp_proto_check_path(".."), -EINVAL);
	assert_int_equal(vp_proto_check_path("a/./b"), -EINVAL);
	assert_int_equal(vp_proto_check_path("a//b"), -EINVAL);
	assert_int_equal(vp_proto_check_path("a/"), -EINVAL);
	assert_int_equal(vp_proto_check_path(".viperfs-staging/x"), -EINVAL);
	{
		char longname[300];

		memset(longname, 'x', 256);
		longname[256] = '\0';
		assert_int_equal(vp_proto_check_path(longname), -EINVAL);
	}
}

/* Encodes a valid ANNOUNCE, lets mutate() damage it, and expects a refusal. */
static void expect_refused(void (*mutate)(uint8_t *b, size_t *n), const char *want)
{
	struct vp_msg *m = msg_new(VP_MSG_ANNOUNCE), *d = calloc(1, sizeof(*d));
	const char *why = NULL;
	ssize_t n;
	size_t len;

	m->u.announce.size = 10;
	m->u.announce.chunk_size = 1u << 20;
	m->u.announce.nchunks = 1;
	m->u.announce.count = 1;
	strcpy(m->u.announce.path, "abcd");
	n = vp_msg_encode(m, buf, sizeof(buf));
	assert_true(n > 0);
	len = (size_t)n;
	mutate(buf, &len);
	assert_int_equal(vp_msg_decode(buf, len, d, &why), -EBADMSG);
	if (!why || !strstr(why, want))
		fail_msg("refused for '%s', expected '%s'", why ? why : "(null)", want);
	free(m);
	free(d);
}

/* The path "abcd" sits right after 2 + the fixed fields; find it. */
static uint8_t *path_in(uint8_t *b, size_t n)
{
	return memmem(b, n, "abcd", 4);
}

static void m_magic(uint8_t *b, size_t *n) { (void)n; b[0] ^= 1; }
static void m_truncate(uint8_t *b, size_t *n) { (void)b; *n -= 3; }
static void m_trailing(uint8_t *b, size_t *n) { b[*n] = 0; (*n)++; b[8]++; }
static void m_dotdot(uint8_t *b, size_t *n) { memcpy(path_in(b, *n), "../x", 4); }
static void m_slash(uint8_t *b, size_t *n) { memcpy(path_in(b, *n), "/abc", 4); }
static void m_nul(uint8_t *b, size_t *n) { path_in(b, *n)[1] = '\0'; }
static void m_size(uint8_t *b, size_t *n)
{
	/* size is the third u64 of the payload: make it 2 MiB with one chunk */
	(void)n;
	b[VP_PROTO_HDR + 16 + 2] = 0x20;
}
static void m_type(uint8_t *b, size_t *n) { (void)n; b[6] = 99; }
static void m_plen(uint8_t *b, size_t *n) { (void)n; b[8] += 1; }

static void test_malformed_messages_are_refused(void **state)
{
	(void)state;
	expect_refused(m_magic, "magic");
	expect_refused(m_truncate, "");
	expect_refused(m_trailing, "");
	expect_refused(m_dotdot, "bad path");
	expect_refused(m_slash, "bad path");
	expect_refused(m_nul, "NUL");
	expect_refused(m_size, "chunk layout");
	expect_refused(m_type, "unknown message type");
	expect_refused(m_plen, "payload length");
}

static void test_encoder_refuses_what_would_not_decode(void **state)
{
	struct vp_msg *m = msg_new(VP_MSG_OP);

	(void)state;
	m->u.op.kind = VP_OP_RENAME;
	strcpy(m->u.op.path, "a");
	strcpy(m->u.op.path2, "../b");
	assert_int_equal(vp_msg_encode(m, buf, sizeof(buf)), -EINVAL);
	m->u.op.kind = 77;
	strcpy(m->u.op.path2, "b");
	assert_int_equal(vp_msg_encode(m, buf, sizeof(buf)), -EINVAL);
	m->u.op.kind = VP_OP_MKDIR;
	assert_int_equal(vp_msg_encode(m, buf, 30), -EMSGSIZE);
	free(m);
}

/* LINK: a new name (path) of the node at path2; both paths checked both ways. */
static void test_link_ops(void **state)
{
	struct vp_msg *m = msg_new(VP_MSG_OP), *d = calloc(1, sizeof(*d));
	const char *why = NULL;
	uint8_t *at;
	ssize_t n;

	(void)state;
	m->u.op.kind = VP_OP_LINK;
	m->u.op.mode = 0644;
	strcpy(m->u.op.path, "run/pppp");
	strcpy(m->u.op.path2, "qqqq/model.pt");
	free(d);
	d = roundtrip(m);
	assert_int_equal(d->u.op.kind, VP_OP_LINK);
	assert_string_equal(d->u.op.path, "run/pppp");
	assert_string_equal(d->u.op.path2, "qqqq/model.pt");
	/* the encoder refuses a target that would not decode */
	strcpy(m->u.op.path2, "../model.pt");
	assert_int_equal(vp_msg_encode(m, buf, sizeof(buf)), -EINVAL);
	m->u.op.path2[0] = '\0';
	assert_int_equal(vp_msg_encode(m, buf, sizeof(buf)), -EINVAL);
	/* and the decoder one that a peer sends anyway */
	strcpy(m->u.op.path2, "qqqq/model.pt");
	n = vp_msg_encode(m, buf, sizeof(buf));
	assert_true(n > 0);
	at = memmem(buf, (size_t)n, "qqqq", 4);
	assert_non_null(at);
	memcpy(at, "/etc", 4);
	assert_int_equal(vp_msg_decode(buf, (size_t)n, d, &why), -EBADMSG);
	assert_non_null(why);
	assert_non_null(strstr(why, "bad link target"));
	memcpy(at, "../q", 4);
	assert_int_equal(vp_msg_decode(buf, (size_t)n, d, &why), -EBADMSG);
	assert_non_null(strstr(why, "bad link target"));
	free(m);
	free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrips),
		cmocka_unit_test(test_relay_messages),
		cmocka_unit_test(test_path_rules),
		cmocka_unit_test(test_malformed_messages_are_refused),
		cmocka_unit_test(test_encoder_refuses_what_would_not_decode),
		cmocka_unit_test(test_link_ops),
	};
	return cmocka_run_group_tests_name("proto", tests, NULL, NULL);
}
