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

/* ---- encode ------------------------------------------------------------ */

ssize_t vp_msg_encode(const struct vp_msg *m, void *buf, size_t len)
{
	struct wr w = { .p = buf, .len = len };
	size_t payload_at;

	put_u32(&w, VP_PROTO_MAGIC);
	put_u16(&w, VP_PROTO_VERSION);
	put_u16(&w, (uint16_t)m->type);
	put_u32(&w, 0);		/* payload length, filled in below */
	put_u64(&w, m->peer_id);
	payload_at = w.off;
	switch (m->type) {
	case VP_MSG_HELLO:
		if (m->u.hello.name_len == 0 || m->u.hello.name_len > VP_PROTO_NAME_MAX)
			return -EINVAL;
		put(&w, m->u.hello.nonce, VP_PROTO_NONCE);
		put_u16(&w, m->u.hello.name_len);
		put(&w, m->u.hello.name, m->u.hello.name_len);
		break;
	case VP_MSG_CHALLENGE:
		put_u64(&w, m->u.challenge.assigned_id);
		put(&w, m->u.challenge.nonce, VP_PROTO_NONCE);
		put(&w, m->u.challenge.mac, VP_PROTO_MAC);
		break;
	case VP_MSG_AUTH:
		put(&w, m->u.auth.mac, VP_PROTO_MAC);
		break;
	case VP_MSG_WELCOME:
		break;
	case VP_MSG_REFUSED:
		put_str(&w, m->u.refused.reason);
		break;
	case VP_MSG_ANNOUNCE: {
		const typeof(m->u.announce) *a = &m->u.announce;

		if (vp_proto_check_path(a->path) ||
		    !chunk_layout_ok(a->size, a->chunk_size, a->nchunks) ||
		    a->count > VP_PROTO_CHUNKS_PER_MSG ||
		    (uint64_t)a->first + a->count > a->nchunks ||
		    (a->flags & ~VP_ANNOUNCE_FLAGS) ||
		    ((a->flags & VP_ANNOUNCE_PREVIEW) && a->size % a->chunk_size))
			return -EINVAL;
		put_u64(&w, a->seq);
		put_u64(&w, a->version);
		put_u64(&w, a->size);
		put_u64(&w, a->checksum);
		put_u32(&w, a->mode);
		put_u32(&w, a->flags);
		put_u64(&w, (uint64_t)a->mtime_ns);
		put_u32(&w, a->chunk_size);
		put_u32(&w, a->nchunks);
		put_u32(&w, a->first);
		put_u32(&w, a->count);
		put_str(&w, a->path);
		for (uint32_t i = 0; i < a->count; i++) {
			put_u64(&w, a->chunk[i].addr);
			put_u64(&w, a->chunk[i].key);
			put_u64(&w, a->chunk[i].hash);
		}
		break;
	}
	case VP_MSG_OP:
		if (vp_proto_check_path(m->u.op.path) ||
		    m->u.op.kind < VP_OP_MKDIR || m->u.op.kind > VP_OP_KEEP ||
		    (m->u.op.kind == VP_OP_RENAME && vp_proto_check_path(m->u.op.path2)) ||
		    (m->u.op.kind == VP_OP_SYMLINK && !m->u.op.path2[0]))
			return -EINVAL;
		put_u64(&w, m->u.op.seq);
		put_u32(&w, m->u.op.kind);
		put_u32(&w, m->u.op.mode);
		put_str(&w, m->u.op.path);
		put_str(&w, m->u.op.path2);
		break;
	case VP_MSG_SYNC_END:
		put_u64(&w, m->u.sync_end.seq);
		break;
	case VP_MSG_DONE:
		put_u64(&w, m->u.done.seq);
		put_u64(&w, m->u.done.version);
		put_u32(&w, (uint32_t)m->u.done.status);
		put_u64(&w, m->u.done.from_producer);
		put_u64(&w, m->u.done.from_relay);
		break;
	case VP_MSG_HEARTBEAT:
		put_u64(&w, m->u.heartbeat.latest_seq);
		break;
	case VP_MSG_TOPO:
		if (!peer_ref_ok(&m->u.topo.parent) ||
		    m->u.topo.nchildren > VP_PROTO_MAX_CHILDREN)
			return -EINVAL;
		put_peer_ref(&w, &m->u.topo.parent);
		put_u16(&w, m->u.topo.nchildren);
		for (unsigned int i = 0; i < m->u.topo.nchildren; i++) {
			if (!m->u.topo.child[i].id || !peer_ref_ok(&m->u.topo.child[i]))
				return -EINVAL;
			put_peer_ref(&w, &m->u.topo.child[i]);
		}
		break;
	case VP_MSG_CHUNKS: {
		const typeof(m->u.chunks) *c = &m->u.chunks;

		if (c->count > VP_PROTO_CHUNKS_PER_MSG || (c->flags & ~VP_CHUNKS_LAST))
			return -EINVAL;
		put_u64(&w, c->seq);
		put_u32(&w, c->nchunks);
		put_u32(&w, c->flags);
		put_u32(&w, c->count);
		for (uint32_t i = 0; i < c->count; i++) {
			if (c->chunk[i].idx >= c->nchunks || !c->chunk[i].key)
				return -EINVAL;
			put_u32(&w, c->chunk[i].idx);
			put_u64(&w, c->chunk[i].addr);
			put_u64(&w, c->chunk[i].key);
		}
		break;
	}
	case VP_MSG_RELAY_DONE:
		put_u64(&w, m->u.relay_done.seq);
		break;
	default:
		return -EINVAL;
	}
	if (w.overflow)
		return -EMSGSIZE;
	{
		uint32_t plen = (uint32_t)(w.off - payload_at);
		uint8_t *p = (uint8_t *)buf + 8;

		for (int i = 0; i < 4; i++)
			p[i] = (uint8_t)(plen >> (8 * i));
	}
	return (ssize_t)w.off;
}

/* ---- decode ------------------------------------------------------------ */

int vp_msg_decode(const void *buf, size_t len, struct vp_msg *m,
		  const char **why)
{
	struct rd r = { .p = buf, .len = len };
	uint32_t magic, plen;
	uint16_t version;

	memset(m, 0, offsetof(struct vp_msg, u));
	magic = get_u32(&r);
	version = get_u16(&r);
	m->type = (enum vp_msg_type)get_u16(&r);
	plen = get_u32(&r);
	m->peer_id = get_u64(&r);
	if (r.err)
		goto bad;
	if (magic != VP_PROTO_MAGIC) {
		r.err = "bad magic";
		goto bad;
	}
	if (version != VP_PROTO_VERSION) {
		r.err = "unsupported protocol version";
		goto bad;
	}
	if ((size_t)plen != len - VP_PROTO_HDR) {
		r.err = "payload length does not match the message";
		goto bad;
	}
	switch (m->type) {
	case VP_MSG_HELLO:
		get(&r, m->u.hello.nonce, VP_PROTO_NONCE);
		m->u.hello.name_len = get_u16(&r);
		if (!r.err && (m->u.hello.name_len == 0 ||
			       m->u.hello.name_len > VP_PROTO_NAME_MAX))
			r.err = "bad endpoint name length";
		else
			get(&r, m->u.hello.name, m->u.hello.name_len);
		break;
	case VP_MSG_CHALLENGE:
		m->u.challenge.assigned_id = get_u64(&r);
		get(&r, m->u.challenge.nonce, VP_PROTO_NONCE);
		get(&r, m->u.challenge.mac, VP_PROTO_MAC);
		break;
	case VP_MSG_AUTH:
		get(&r, m->u.auth.mac, VP_PROTO_MAC);
		break;
	case VP_MSG_WELCOME:
		break;
	case VP_MSG_REFUSED:
		get_str(&r, m->u.refused.reason, sizeof(m->u.refused.reason));
		break;
	case VP_MSG_ANNOUNCE: {
		typeof(m->u.announce) *a = &m->u.announce;

		a->seq = get_u64(&r);
		a->version = get_u64(&r);
		a->size = get_u64(&r);
		a->checksum = get_u64(&r);
		a->mode = get_u32(&r);
		a->flags = get_u32(&r);
		a->mtime_ns = (int64_t)get_u64(&r);
		a->chunk_size = get_u32(&r);
		a->nchunks = get_u32(&r);
		a->first = get_u32(&r);
		a->count = get_u32(&r);
		get_str(&r, a->path, sizeof(a->path));
		if (r.err)
			break;
		if (vp_proto_check_path(a->path))
			r.err = "bad path";
		else if (!chunk_layout_ok(a->size, a->chunk_size, a->nchunks))
			r.err = "size does not match the chunk layout";
		else if (a->count > VP_PROTO_CHUNKS_PER_MSG ||
			 (uint64_t)a->first + a->count > a->nchunks)
			r.err = "chunk range out of bounds";
		else if ((a->mode & S_IFMT_MASK) != 0)
			r.err = "mode has file type bits";
		else if (a->flags & ~VP_ANNOUNCE_FLAGS)
			r.err = "unknown announce flags";
		else if ((a->flags & VP_ANNOUNCE_PREVIEW) && a->size % a->chunk_size)
			r.err = "a preview covers whole chunks only";
		else if (a->count * 24ULL != len - r.off)
			r.err = "chunk list length does not match";
		for (uint32_t i = 0; !r.err && i < a->count; i++) {
			a->chunk[i].addr = get_u64(&r);
			a->chunk[i].key = get_u64(&r);
			a->chunk[i].hash = get_u64(&r);
			if (!a->chunk[i].key && a->chunk[i].hash)
				r.err = "a hole with a hash";
		}
		break;
	}
	case VP_MSG_OP:
		m->u.op.seq = get_u64(&r);
		m->u.op.kind = get_u32(&r);
		m->u.op.mode = get_u32(&r);
		get_str(&r, m->u.op.path, sizeof(m->u.op.path));
		get_str(&r, m->u.op.path2, sizeof(m->u.op.path2));
		if (r.err)
			break;
		if (m->u.op.kind < VP_OP_MKDIR || m->u.op.kind > VP_OP_KEEP)
			r.err = "unknown operation";
		else if (vp_proto_check_path(m->u.op.path))
			r.err = "bad path";
		else if (m->u.op.kind == VP_OP_RENAME && vp_proto_check_path(m->u.op.path2))
			r.err = "bad rename target";
		else if (m->u.op.kind == VP_OP_SYMLINK && !m->u.op.path2[0])
			r.err = "empty symlink target";
		else if (m->u.op.mode & S_IFMT_MASK)
			r.err = "mode has file type bits";
		break;
	case VP_MSG_SYNC_END:
		m->u.sync_end.seq = get_u64(&r);
		break;
	case VP_MSG_DONE:
		m->u.done.seq = get_u64(&r);
		m->u.done.version = get_u64(&r);
		m->u.done.status = (int32_t)get_u32(&r);
		m->u.done.from_producer = get_u64(&r);
		m->u.done.from_relay = get_u64(&r);
		break;
	case VP_MSG_HEARTBEAT:
		m->u.heartbeat.latest_seq = get_u64(&r);
		break;
	case VP_MSG_TOPO:
		get_peer_ref(&r, &m->u.topo.parent);
		m->u.topo.nchildren = get_u16(&r);
		if (!r.err && m->u.topo.nchildren > VP_PROTO_MAX_CHILDREN)
			r.err = "too many relay children";
		for (unsigned int i = 0; !r.err && i < m->u.topo.nchildren; i++) {
			get_peer_ref(&r, &m->u.topo.child[i]);
			if (!r.err && !m->u.topo.child[i].id)
				r.err = "a relay child without an id";
		}
		break;
	case VP_MSG_CHUNKS: {
		typeof(m->u.chunks) *c = &m->u.chunks;

		c->seq = get_u64(&r);
		c->nchunks = get_u32(&r);
		c->flags = get_u32(&r);
		c->count = get_u32(&r);
		if (r.err)
			break;
		if (c->flags & ~VP_CHUNKS_LAST)
			r.err = "unknown chunks flags";
		else if (c->count > VP_PROTO_CHUNKS_PER_MSG)
			r.err = "too many chunks";
		else if (c->count * 20ULL != len - r.off)
			r.err = "chunk list length does not match";
		for (uint32_t i = 0; !r.err && i < c->count; i++) {
			c->chunk[i].idx = get_u32(&r);
			c->chunk[i].addr = get_u64(&r);
			c->chunk[i].key = get_u64(&r);
			if (c->chunk[i].idx >= c->nchunks)
				r.err = "chunk index out of bounds";
			else if (!c->chunk[i].key)
				r.err = "an offered chunk without a key";
		}
		break;
	}
	case VP_MSG_RELAY_DONE:
		m->u.relay_done.seq = get_u64(&r);
		break;
	default:
		r.err = "unknown message type";
	}
	if (!r.err && r.off != len)
		r.err = "trailing bytes";
	if (!r.err)
		return 0;
bad:
	if (why)
		*why = r.err;
	return -EBADMSG;
}
