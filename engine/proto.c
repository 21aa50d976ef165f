/* proto: see proto.h. */
#define _GNU_SOURCE
#include "proto.h"

#include <errno.h>
#include <string.h>

#define S_IFMT_MASK 0170000u	/* the file type bits of a mode */

/* ---- little-endian writer and reader --------------------------------- */

struct wr {
	uint8_t *p;
	size_t len, off;
	int overflow;
};

static void put(struct wr *w, const void *src, size_t n)
{
	if (w->overflow || n > w->len - w->off) {
		w->overflow = 1;
		return;
	}
	memcpy(w->p + w->off, src, n);
	w->off += n;
}

static void put_u16(struct wr *w, uint16_t v)
{
	uint8_t b[2] = { (uint8_t)v, (uint8_t)(v >> 8) };

	put(w, b, 2);
}

static void put_u32(struct wr *w, uint32_t v)
{
	uint8_t b[4];

	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put(w, b, 4);
}

static void put_u64(struct wr *w, uint64_t v)
{
	uint8_t b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put(w, b, 8);
}

static void put_str(struct wr *w, const char *s)
{
	size_t n = strlen(s);

	if (n > UINT16_MAX) {
		w->overflow = 1;
		return;
	}
	put_u16(w, (uint16_t)n);
	put(w, s, n);
}

struct rd {
	const uint8_t *p;
	size_t len, off;
	const char *err;
};

static int get(struct rd *r, void *dst, size_t n)
{
	if (r->err)
		return -1;
	if (n > r->len - r->off) {
		r->err = "truncated message";
		return -1;
	}
	memcpy(dst, r->p + r->off, n);
	r->off += n;
	return 0;
}

static uint16_t get_u16(struct rd *r)
{
	uint8_t b[2] = { 0 };

	get(r, b, 2);
	return (uint16_t)(b[0] | b[1] << 8);
}

static uint32_t get_u32(struct rd *r)
{
	uint8_t b[4] = { 0 };
	uint32_t v = 0;

	get(r, b, 4);
	for (int i = 3; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

static uint64_t get_u64(struct rd *r)
{
	uint8_t b[8] = { 0 };
	uint64_t v = 0;

	get(r, b, 8);
	for (int i = 7; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

/* Reads a string into dst[cap]; no NUL may be inside. */
static void get_str(struct rd *r, char *dst, size_t cap)
{
	uint16_t n = get_u16(r);

	if (r->err)
		return;
	if ((size_t)n >= cap) {
		r->err = "string too long";
		return;
	}
	if (get(r, dst, n))
		return;
	if (memchr(dst, '\0', n)) {
		r->err = "NUL inside a string";
		return;
	}
	dst[n] = '\0';
}

/* ---- validation -------------------------------------------------------- */

int vp_proto_check_path(const char *path)
{
	const char *p = path;
	size_t total = strlen(path);

	if (total == 0 || total >= PATH_MAX || *p == '/')
		return -EINVAL;
	while (*p) {
		size_t n = strcspn(p, "/");

		if (n == 0 || n > 255)
			return -EINVAL;	/* "a//b", a trailing "/", or a long name */
		if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return -EINVAL;
		p += n;
		if (*p == '/') {
			p++;
			if (!*p)
				return -EINVAL;
		}
	}
	/* the staging and incoming folders belong to viperfs */
	if (!strncmp(path, ".viperfs-", 9))
		return -EINVAL;
	return 0;
}

const char *vp_msg_type_name(enum vp_msg_type t)
{
	static const char *const names[] = {
		[VP_MSG_HELLO] = "HELLO", [VP_MSG_CHALLENGE] = "CHALLENGE",
		[VP_MSG_AUTH] = "AUTH", [VP_MSG_WELCOME] = "WELCOME",
		[VP_MSG_REFUSED] = "REFUSED", [VP_MSG_ANNOUNCE] = "ANNOUNCE",
		[VP_MSG_OP] = "OP", [VP_MSG_SYNC_END] = "SYNC_END",
		[VP_MSG_DONE] = "DONE", [VP_MSG_HEARTBEAT] = "HEARTBEAT",
		[VP_MSG_TOPO] = "TOPO", [VP_MSG_CHUNKS] = "CHUNKS",
		[VP_MSG_RELAY_DONE] = "RELAY_DONE",
	};
	return t >= VP_MSG_HELLO && t <= VP_MSG_RELAY_DONE ? names[t] : "?";
}

static int chunk_layout_ok(uint64_t size, uint32_t chunk_size, uint32_t nchunks)
{
	if (chunk_size < 4096 || chunk_size > (64u << 20) ||
	    (chunk_size & (chunk_size - 1)))
		return 0;
	return size <= VP_PROTO_MAX_FILE &&
	       (uint64_t)nchunks == (size + chunk_size - 1) / chunk_size;
}

/* A relay tree node: id 0 (none) has no name; any other has one. */
static int peer_ref_ok(const struct vp_peer_ref *p)
{
	return p->id ? p->name_len > 0 && p->name_len <= VP_PROTO_NAME_MAX :
		       p->name_len == 0;
}

static void put_peer_ref(struct wr *w, const struct vp_peer_ref *p)
{
	put_u64(w, p->id);
	put_u16(w, p->name_len);
	put(w, p->name, p->name_len);
	put(w, p->key, VP_PROTO_EDGE_KEY);
}

static void get_peer_ref(struct rd *r, struct vp_peer_ref *p)
{
	p->id = get_u64(r);
	p->name_len = get_u16(r);
	if (r->err)
		return;
	if (p->name_len > VP_PROTO_NAME_MAX) {
		r->err = "bad endpoint name length";
		return;
	}
	get(r, p->name, p->name_len);
	get(r, p->key, VP_PROTO_EDGE_KEY);
	if (!r->err && !peer_ref_ok(p))
		r->err = "a relay node without a name, or a name without a node";
}

int vp_msg_peek_type(const void *buf, size_t len)
{
	struct rd r = { .p = buf, .len = len, .off = 6 };	/* after magic and version */

	return len < VP_PROTO_HDR ? -1 : get_u16(&r);
}

/* ---- the per-type layouts ---------------------------------------------- */

/*
 * The fixed fields of a payload, in wire order: integers of the member's
 * width, byte arrays of the member's size, and strings (u16 length +
 * bytes) into a char array of the member's size.  Both directions read
 * the same table, so encoder and decoder cannot disagree on a layout.
 */
enum field_kind { F_INT, F_BYTES, F_STR };

struct field {
	enum field_kind kind;
	size_t off;		/* in struct vp_msg */
	size_t size;		/* of the member */
};

#define FIELD(kind, member) \
	{ kind, offsetof(struct vp_msg, u.member), sizeof(((struct vp_msg *)0)->u.member) }

static void put_field(struct wr *w, const struct vp_msg *m, const struct field *f)
{
	const uint8_t *at = (const uint8_t *)m + f->off;
	uint16_t v16;
	uint32_t v32;
	uint64_t v64;

	switch (f->kind) {
	case F_INT:
		if (f->size == 2) {
			memcpy(&v16, at, 2);
			put_u16(w, v16);
		} else if (f->size == 4) {
			memcpy(&v32, at, 4);
			put_u32(w, v32);
		} else {
			memcpy(&v64, at, 8);
			put_u64(w, v64);
		}
		break;
	case F_BYTES:
		put(w, at, f->size);
		break;
	case F_STR:
		put_str(w, (const char *)at);
		break;
	}
}

static void get_field(struct rd *r, struct vp_msg *m, const struct field *f)
{
	uint8_t *at = (uint8_t *)m + f->off;
	uint16_t v16;
	uint32_t v32;
	uint64_t v64;

	switch (f->kind) {
	case F_INT:
		if (f->size == 2) {
			v16 = get_u16(r);
			memcpy(at, &v16, 2);
		} else if (f->size == 4) {
			v32 = get_u32(r);
			memcpy(at, &v32, 4);
		} else {
			v64 = get_u64(r);
			memcpy(at, &v64, 8);
		}
		break;
	case F_BYTES:
		get(r, at, f->size);
		break;
	case F_STR:
		get_str(r, (char *)at, f->size);
		break;
	}
}

static const struct field hello_fields[] = {
	FIELD(F_BYTES, hello.nonce), FIELD(F_INT, hello.name_len),
};
static const struct field challenge_fields[] = {
	FIELD(F_INT, challenge.assigned_id), FIELD(F_BYTES, challenge.nonce),
	FIELD(F_BYTES, challenge.mac),
};
static const struct field auth_fields[] = { FIELD(F_BYTES, auth.mac) };
static const struct field refused_fields[] = { FIELD(F_STR, refused.reason) };
static const struct field welcome_fields[] = { FIELD(F_INT, welcome.epoch) };
static const struct field announce_fields[] = {
	FIELD(F_INT, announce.seq), FIELD(F_INT, announce.version),
	FIELD(F_INT, announce.size), FIELD(F_INT, announce.checksum), FIELD(F_INT, announce.epoch),
	FIELD(F_INT, announce.mode), FIELD(F_INT, announce.flags),
	FIELD(F_INT, announce.mtime_ns), FIELD(F_INT, announce.chunk_size),
	FIELD(F_INT, announce.nchunks), FIELD(F_INT, announce.first),
	FIELD(F_INT, announce.count), FIELD(F_STR, announce.path),
};
static const struct field op_fields[] = {
	FIELD(F_INT, op.seq), FIELD(F_INT, op.kind), FIELD(F_INT, op.mode),
	FIELD(F_INT, op.version), FIELD(F_INT, op.epoch), FIELD(F_INT, op.rdev),
	FIELD(F_STR, op.path), FIELD(F_STR, op.path2),
};
static const struct field sync_end_fields[] = { FIELD(F_INT, sync_end.seq) };
static const struct field done_fields[] = {
	FIELD(F_INT, done.seq), FIELD(F_INT, done.version),
	FIELD(F_INT, done.status), FIELD(F_INT, done.epoch), FIELD(F_INT, done.from_producer),
	FIELD(F_INT, done.from_relay),
};
static const struct field heartbeat_fields[] = { FIELD(F_INT, heartbeat.latest_seq) };
static const struct field chunks_fields[] = {
	FIELD(F_INT, chunks.seq), FIELD(F_INT, chunks.nchunks),
	FIELD(F_INT, chunks.flags), FIELD(F_INT, chunks.count),
};
static const struct field relay_done_fields[] = { FIELD(F_INT, relay_done.seq) };

/* ---- what the layouts cannot say: checks and variable tails ------------- */

/* Encode side: 0, or -EINVAL for a field that would not decode. */
static int hello_check(const struct vp_msg *m)
{
	return m->u.hello.name_len == 0 || m->u.hello.name_len > VP_PROTO_NAME_MAX ?
	       -EINVAL : 0;
}

static void hello_put_tail(struct wr *w, const struct vp_msg *m)
{
	put(w, m->u.hello.name, m->u.hello.name_len);
}

static void hello_get_tail(struct rd *r, struct vp_msg *m)
{
	if (!r->err && (m->u.hello.name_len == 0 ||
			m->u.hello.name_len > VP_PROTO_NAME_MAX))
		r->err = "bad endpoint name length";
	else
		get(r, m->u.hello.name, m->u.hello.name_len);
}

static int announce_check(const struct vp_msg *m)
{
	const typeof(m->u.announce) *a = &m->u.announce;

	if (vp_proto_check_path(a->path) ||
	    !chunk_layout_ok(a->size, a->chunk_size, a->nchunks) ||
	    a->count > VP_PROTO_CHUNKS_PER_MSG ||
	    (uint64_t)a->first + a->count > a->nchunks ||
	    (a->flags & ~VP_ANNOUNCE_FLAGS) ||
	    ((a->flags & VP_ANNOUNCE_PREVIEW) && a->size % a->chunk_size))
		return -EINVAL;
	return 0;
}

static void announce_put_tail(struct wr *w, const struct vp_msg *m)
{
	const typeof(m->u.announce) *a = &m->u.announce;

	for (uint32_t i = 0; i < a->count; i++) {
		put_u64(w, a->chunk[i].addr);
		put_u64(w, a->chunk[i].key);
		put_u64(w, a->chunk[i].hash);
	}
}

/* Why the fixed fields of a decoded announce are refused, or NULL. */
static const char *announce_refusal(const struct vp_msg *m)
{
	const typeof(m->u.announce) *a = &m->u.announce;

	if (vp_proto_check_path(a->path))
		return "bad path";
	if (!chunk_layout_ok(a->size, a->chunk_size, a->nchunks))
		return "size does not match the chunk layout";
	if (a->count > VP_PROTO_CHUNKS_PER_MSG ||
	    (uint64_t)a->first + a->count > a->nchunks)
		return "chunk range out of bounds";
	if ((a->mode & S_IFMT_MASK) != 0)
		return "mode has file type bits";
	if (a->flags & ~VP_ANNOUNCE_FLAGS)
		return "unknown announce flags";
	if ((a->flags & VP_ANNOUNCE_PREVIEW) && a->size % a->chunk_size)
		return "a preview covers whole chunks only";
	return NULL;
}

static void announce_get_tail(struct rd *r, struct vp_msg *m)
{
	typeof(m->u.announce) *a = &m->u.announce;

	if (r->err)
		return;
	r->err = announce_refusal(m);
	if (!r->err && a->count * 24ULL != r->len - r->off)
		r->err = "chunk list length does not match";
	for (uint32_t i = 0; !r->err && i < a->count; i++) {
		a->chunk[i].addr = get_u64(r);
		a->chunk[i].key = get_u64(r);
		a->chunk[i].hash = get_u64(r);
		if (!a->chunk[i].key && a->chunk[i].hash)
			r->err = "a hole with a hash";
	}
}

int vp_proto_special_mode(uint32_t mode)
{
	switch (mode & S_IFMT_MASK) {
	case 0010000u:	/* S_IFIFO */
	case 0140000u:	/* S_IFSOCK */
	case 0020000u:	/* S_IFCHR */
	case 0060000u:	/* S_IFBLK */
		return 1;
	default:
		return 0;
	}
}

static int op_check(const struct vp_msg *m)
{
	if (vp_proto_check_path(m->u.op.path) ||
	    m->u.op.kind < VP_OP_MKDIR || m->u.op.kind > VP_OP_LAST ||
	    (m->u.op.kind == VP_OP_MKNOD && !vp_proto_special_mode(m->u.op.mode)) ||
	    ((m->u.op.kind == VP_OP_RENAME || m->u.op.kind == VP_OP_LINK) &&
	     vp_proto_check_path(m->u.op.path2)) ||
	    (m->u.op.kind == VP_OP_SYMLINK && !m->u.op.path2[0]))
		return -EINVAL;
	return 0;
}

static void op_get_tail(struct rd *r, struct vp_msg *m)
{
	if (r->err)
		return;
	if (m->u.op.kind < VP_OP_MKDIR || m->u.op.kind > VP_OP_LAST)
		r->err = "unknown operation";
	else if (m->u.op.kind == VP_OP_MKNOD && !vp_proto_special_mode(m->u.op.mode))
		r->err = "a node that is not a FIFO, socket or device";
	else if (vp_proto_check_path(m->u.op.path))
		r->err = "bad path";
	else if (m->u.op.kind == VP_OP_RENAME && vp_proto_check_path(m->u.op.path2))
		r->err = "bad rename target";
	else if (m->u.op.kind == VP_OP_LINK && vp_proto_check_path(m->u.op.path2))
		r->err = "bad link target";
	else if (m->u.op.kind == VP_OP_SYMLINK && !m->u.op.path2[0])
		r->err = "empty symlink target";
	else if (m->u.op.kind != VP_OP_MKNOD && (m->u.op.mode & S_IFMT_MASK))
		r->err = "mode has file type bits";
}

static int topo_check(const struct vp_msg *m)
{
	if (!peer_ref_ok(&m->u.topo.parent) ||
	    m->u.topo.nchildren > VP_PROTO_MAX_CHILDREN)
		return -EINVAL;
	for (unsigned int i = 0; i < m->u.topo.nchildren; i++)
		if (!m->u.topo.child[i].id || !peer_ref_ok(&m->u.topo.child[i]))
			return -EINVAL;
	return 0;
}

static void topo_put_tail(struct wr *w, const struct vp_msg *m)
{
	put_peer_ref(w, &m->u.topo.parent);
	put_u16(w, m->u.topo.nchildren);
	for (unsigned int i = 0; i < m->u.topo.nchildren; i++)
		put_peer_ref(w, &m->u.topo.child[i]);
}

static void topo_get_tail(struct rd *r, struct vp_msg *m)
{
	get_peer_ref(r, &m->u.topo.parent);
	m->u.topo.nchildren = get_u16(r);
	if (!r->err && m->u.topo.nchildren > VP_PROTO_MAX_CHILDREN)
		r->err = "too many relay children";
	for (unsigned int i = 0; !r->err && i < m->u.topo.nchildren; i++) {
		get_peer_ref(r, &m->u.topo.child[i]);
		if (!r->err && !m->u.topo.child[i].id)
			r->err = "a relay child without an id";
	}
}

static int chunks_check(const struct vp_msg *m)
{
	const typeof(m->u.chunks) *c = &m->u.chunks;

	if (c->count > VP_PROTO_CHUNKS_PER_MSG || (c->flags & ~VP_CHUNKS_LAST))
		return -EINVAL;
	for (uint32_t i = 0; i < c->count; i++)
		if (c->chunk[i].idx >= c->nchunks || !c->chunk[i].key)
			return -EINVAL;
	return 0;
}

static void chunks_put_tail(struct wr *w, const struct vp_msg *m)
{
	const typeof(m->u.chunks) *c = &m->u.chunks;

	for (uint32_t i = 0; i < c->count; i++) {
		put_u32(w, c->chunk[i].idx);
		put_u64(w, c->chunk[i].addr);
		put_u64(w, c->chunk[i].key);
	}
}

static void chunks_get_tail(struct rd *r, struct vp_msg *m)
{
	typeof(m->u.chunks) *c = &m->u.chunks;

	if (r->err)
		return;
	if (c->flags & ~VP_CHUNKS_LAST)
		r->err = "unknown chunks flags";
	else if (c->count > VP_PROTO_CHUNKS_PER_MSG)
		r->err = "too many chunks";
	else if (c->count * 20ULL != r->len - r->off)
		r->err = "chunk list length does not match";
	for (uint32_t i = 0; !r->err && i < c->count; i++) {
		c->chunk[i].idx = get_u32(r);
		c->chunk[i].addr = get_u64(r);
		c->chunk[i].key = get_u64(r);
		if (c->chunk[i].idx >= c->nchunks)
			r->err = "chunk index out of bounds";
		else if (!c->chunk[i].key)
			r->err = "an offered chunk without a key";
	}
}

/*
 * One entry per message type: its fixed fields, then the hooks (any may
 * be NULL).  check refuses on the encode side what would not decode;
 * put_tail and get_tail handle what follows the fixed fields, get_tail
 * also validating the decoded message (it sets r->err).
 */
struct codec {
	const struct field *fields;
	size_t nfields;
	int (*check)(const struct vp_msg *m);
	void (*put_tail)(struct wr *w, const struct vp_msg *m);
	void (*get_tail)(struct rd *r, struct vp_msg *m);
};

#define FIELDS(a) a, sizeof(a) / sizeof(a[0])

static const struct codec codecs[] = {
	[VP_MSG_HELLO] = { FIELDS(hello_fields), hello_check, hello_put_tail, hello_get_tail },
	[VP_MSG_CHALLENGE] = { FIELDS(challenge_fields), NULL, NULL, NULL },
	[VP_MSG_AUTH] = { FIELDS(auth_fields), NULL, NULL, NULL },
	[VP_MSG_WELCOME] = { FIELDS(welcome_fields), NULL, NULL, NULL },
	[VP_MSG_REFUSED] = { FIELDS(refused_fields), NULL, NULL, NULL },
	[VP_MSG_ANNOUNCE] = { FIELDS(announce_fields), announce_check,
			      announce_put_tail, announce_get_tail },
	[VP_MSG_OP] = { FIELDS(op_fields), op_check, NULL, op_get_tail },
	[VP_MSG_SYNC_END] = { FIELDS(sync_end_fields), NULL, NULL, NULL },
	[VP_MSG_DONE] = { FIELDS(done_fields), NULL, NULL, NULL },
	[VP_MSG_HEARTBEAT] = { FIELDS(heartbeat_fields), NULL, NULL, NULL },
	[VP_MSG_TOPO] = { NULL, 0, topo_check, topo_put_tail, topo_get_tail },
	[VP_MSG_CHUNKS] = { FIELDS(chunks_fields), chunks_check, chunks_put_tail,
			    chunks_get_tail },
	[VP_MSG_RELAY_DONE] = { FIELDS(relay_done_fields), NULL, NULL, NULL },
};

/* The codec of a type read from the wire, or NULL. */
static const struct codec *codec_of(unsigned int type)
{
	return type >= VP_MSG_HELLO && type <= VP_MSG_RELAY_DONE ? &codecs[type] : NULL;
}

/* ---- encode ------------------------------------------------------------ */

ssize_t vp_msg_encode(const struct vp_msg *m, void *buf, size_t len)
{
	const struct codec *c = codec_of((unsigned int)m->type);
	struct wr w = { .p = buf, .len = len };
	uint8_t *plen_at = (uint8_t *)buf + 8;
	uint32_t plen;

	if (!c || (c->check && c->check(m)))
		return -EINVAL;
	put_u32(&w, VP_PROTO_MAGIC);
	put_u16(&w, VP_PROTO_VERSION);
	put_u16(&w, (uint16_t)m->type);
	put_u32(&w, 0);		/* payload length, filled in below */
	put_u64(&w, m->peer_id);
	for (size_t i = 0; i < c->nfields; i++)
		put_field(&w, m, &c->fields[i]);
	if (c->put_tail)
		c->put_tail(&w, m);
	if (w.overflow)
		return -EMSGSIZE;
	plen = (uint32_t)(w.off - VP_PROTO_HDR);
	for (int i = 0; i < 4; i++)
		plen_at[i] = (uint8_t)(plen >> (8 * i));
	return (ssize_t)w.off;
}

/* ---- decode ------------------------------------------------------------ */

/* Reads and checks the header; sets r->err when it is off. */
static void get_header(struct rd *r, struct vp_msg *m)
{
	uint32_t magic, plen;
	uint16_t version;

	magic = get_u32(r);
	version = get_u16(r);
	m->type = (enum vp_msg_type)get_u16(r);
	plen = get_u32(r);
	m->peer_id = get_u64(r);
	if (r->err)
		return;
	if (magic != VP_PROTO_MAGIC)
		r->err = "bad magic";
	else if (version != VP_PROTO_VERSION)
		r->err = "unsupported protocol version";
	else if ((size_t)plen != r->len - VP_PROTO_HDR)
		r->err = "payload length does not match the message";
}

int vp_msg_decode(const void *buf, size_t len, struct vp_msg *m,
		  const char **why)
{
	struct rd r = { .p = buf, .len = len };
	const struct codec *c;

	memset(m, 0, offsetof(struct vp_msg, u));
	get_header(&r, m);
	if (r.err)
		goto bad;
	c = codec_of((unsigned int)m->type);
	if (!c) {
		r.err = "unknown message type";
		goto bad;
	}
	for (size_t i = 0; i < c->nfields; i++)
		get_field(&r, m, &c->fields[i]);
	if (c->get_tail)
		c->get_tail(&r, m);
	if (!r.err && r.off != len)
		r.err = "trailing bytes";
	if (!r.err)
		return 0;
bad:
	if (why)
		*why = r.err;
	return -EBADMSG;
}
