/*
 * proto: the replication wire protocol -- message layouts, encoding, and a
 * decoder that validates every field before anything else sees it.
 *
 * Every message: a 20-byte header {magic "VPR1", u16 version, u16 type,
 * u32 payload length, u64 sender's peer id} and a payload, little-endian.
 * After the handshake (with a secret), messages are sealed (sess.h): this
 * module encodes and decodes the plaintext; the header's peer id is the
 * sender's claim, checked against the address the message came from.
 * Strings are u16 length + bytes (no NUL inside, none at the end).
 *
 *   HELLO      consumer -> producer: nonce, the consumer's endpoint name
 *   CHALLENGE  producer -> consumer: peer id, nonce, HMAC proving the producer
 *   AUTH       consumer -> producer: HMAC proving the consumer
 *   WELCOME    producer -> consumer: subscribed, with the producer's epoch
 *              (its run: versions are ordered by (epoch, version)); a
 *              catch-up follows
 *   REFUSED    either way: a reason; the peer is dropped
 *   ANNOUNCE   producer -> consumer: a file version (path, version, size,
 *              mode, mtime, xxh3 checksum) and where its chunks are (RMA
 *              address + key per chunk; key 0 = a hole); big files take
 *              several ANNOUNCEs, each with a range of chunks
 *   OP         producer -> consumer: mkdir, rename, unlink, rmdir, symlink
 *   SYNC_END   producer -> consumer: the catch-up is complete; what the
 *              catch-up did not name was deleted meanwhile
 *   DONE       consumer -> producer: a version is installed (or skipped),
 *              with the bytes it read from the producer and from its relay;
 *              AHEAD: the consumer holds a later version of the path, of
 *              a run before the producer's (its epoch and number)
 *   HEARTBEAT  both ways
 *   TOPO       producer -> consumer: its place in the relay tree: the
 *              consumer it reads relayed chunks from (id 0: none) and the
 *              consumers it serves, each with an endpoint name and the
 *              key that seals the messages of that edge (sess.h)
 *   CHUNKS     relay -> consumer: chunks of a relayed announce (by seq)
 *              that the relay now holds, checked, with RMA address + key
 *              in the relay's memory; LAST: it offers no more
 *   RELAY_DONE consumer -> relay: done with a relayed announce; the relay
 *              may let go of its chunks.  Also producer -> consumer: done
 *              with the chunks of a RECOVER announce
 *   ANNOUNCE with RECOVER, consumer -> producer: a version the producer
 *              lost (it said AHEAD), in the consumer's memory, for the
 *              producer to read back
 *
 * Paths are relative to the mount, "/"-separated, and each component is
 * 1..255 bytes, not "." or "..", without "/" or NUL: a decoded path can
 * never leave the mount.  Sizes are checked against the chunk layout.
 */
#ifndef VP_PROTO_H
#define VP_PROTO_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define VP_PROTO_MAGIC 0x31525056u	/* "VPR1" */
#define VP_PROTO_VERSION 7		/* 2: per-chunk hashes in ANNOUNCE; 3: relay; 4: sealed sessions, relay edge keys; 5: epochs, recovery; 6: special nodes (MKNOD); 7: hard links (LINK) */
#define VP_PROTO_HDR 20
#define VP_PROTO_NONCE 16
#define VP_PROTO_MAC 32			/* HMAC-SHA256 */
#define VP_PROTO_EDGE_KEY 32		/* TOPO: the key of one relay edge */
#define VP_PROTO_NAME_MAX 64		/* endpoint names */
#define VP_PROTO_MAX_FILE (1ULL << 44)
#define VP_PROTO_CHUNKS_PER_MSG 2048	/* 48 KiB of chunk descriptors */

enum vp_msg_type {
	VP_MSG_HELLO = 1, VP_MSG_CHALLENGE, VP_MSG_AUTH, VP_MSG_WELCOME,
	VP_MSG_REFUSED, VP_MSG_ANNOUNCE, VP_MSG_OP, VP_MSG_SYNC_END,
	VP_MSG_DONE, VP_MSG_HEARTBEAT, VP_MSG_TOPO, VP_MSG_CHUNKS,
	VP_MSG_RELAY_DONE,
};

enum vp_op_kind { VP_OP_MKDIR = 1, VP_OP_RENAME, VP_OP_UNLINK, VP_OP_RMDIR,
		  VP_OP_SYMLINK,
		  VP_OP_KEEP,	/* catch-up: the path exists on the producer (e.g. on the PFS only) */
		  VP_OP_MKNOD,	/* a FIFO, socket or device node: mode with its type, rdev */
		  VP_OP_LINK,	/* a hard link: path a new name of the node at path2 */
};
#define VP_OP_LAST VP_OP_LINK

/*
 * ANNOUNCE flags.  PREVIEW: the full chunks written so far of a version
 * still being written (size is a multiple of chunk_size); a consumer may
 * fetch them early, never installs them, and keeps those whose hash still
 * matches when the version itself is announced.
 */
#define VP_ANNOUNCE_PREVIEW 1u
/*
 * RELAY: the same announce went to the whole tree, so the consumer's relay
 * (TOPO) offers its chunks too.  Catch-ups, sent to one consumer, lack it.
 */
#define VP_ANNOUNCE_RELAY 2u
/*
 * RECOVER: consumer -> producer, a version the restarted producer lacks
 * (epoch: the run that committed it), in the consumer's memory.
 */
#define VP_ANNOUNCE_RECOVER 4u
#define VP_ANNOUNCE_FLAGS (VP_ANNOUNCE_PREVIEW | VP_ANNOUNCE_RELAY | VP_ANNOUNCE_RECOVER)

#define VP_DONE_AHEAD 1		/* DONE status: we hold a later version (done.version, done.epoch) */

#define VP_CHUNKS_LAST 1u	/* CHUNKS: the relay offers nothing more of this seq */
#define VP_PROTO_MAX_CHILDREN 8	/* TOPO: consumers one node serves */

struct vp_peer_ref {		/* TOPO: a node of the relay tree */
	uint64_t id;
	uint16_t name_len;
	uint8_t name[VP_PROTO_NAME_MAX];
	uint8_t key[VP_PROTO_EDGE_KEY];	/* the edge's session key (TOPO is sealed); zeros without a secret */
};

struct vp_chunk_offer {		/* CHUNKS: chunk idx, in the relay's memory */
	uint32_t idx;
	uint64_t addr;
	uint64_t key;
};

struct vp_chunk_ref {
	uint64_t addr;
	uint64_t key;		/* 0: a hole, reads as zeros */
	uint64_t hash;		/* xxh3-64 of the chunk's bytes (0 for a hole) */
};

struct vp_msg {
	enum vp_msg_type type;
	uint64_t peer_id;
	union {
		struct {
			uint8_t nonce[VP_PROTO_NONCE];
			uint16_t name_len;
			uint8_t name[VP_PROTO_NAME_MAX];
		} hello;
		struct {
			uint64_t assigned_id;
			uint8_t nonce[VP_PROTO_NONCE];
			uint8_t mac[VP_PROTO_MAC];
		} challenge;
		struct {
			uint8_t mac[VP_PROTO_MAC];
		} auth;
		struct {
			char reason[128];
		} refused;
		struct {
			uint64_t epoch;		/* the producer's run */
		} welcome;
		struct {
			uint64_t seq, version, size, checksum;
			uint64_t epoch;		/* the producer's run that committed it (0: unknown) */
			uint32_t mode;
			uint32_t flags;		/* VP_ANNOUNCE_* */
			int64_t mtime_ns;
			uint32_t chunk_size, nchunks, first, count;
			char path[PATH_MAX];
			struct vp_chunk_ref chunk[VP_PROTO_CHUNKS_PER_MSG];
		} announce;
		struct {
			uint64_t seq;
			uint32_t kind;	/* enum vp_op_kind */
			uint32_t mode;
			uint64_t version, epoch;	/* KEEP: the version on the PFS */
			uint64_t rdev;			/* MKNOD: the device number */
			char path[PATH_MAX];
			char path2[PATH_MAX];	/* rename target, symlink target */
		} op;
		struct {
			uint64_t seq;
		} sync_end;
		struct {
			uint64_t seq, version;
			int32_t status;		/* 0 installed, VP_DONE_AHEAD, else -errno */
			uint64_t epoch;		/* AHEAD: of the version we hold */
			uint64_t from_producer;	/* bytes read from the producer's memory */
			uint64_t from_relay;	/* bytes read from the relay's */
		} done;
		struct {
			uint64_t latest_seq;
		} heartbeat;
		struct {
			struct vp_peer_ref parent;	/* id 0: none */
			uint16_t nchildren;
			struct vp_peer_ref child[VP_PROTO_MAX_CHILDREN];
		} topo;
		struct {
			uint64_t seq;
			uint32_t nchunks;	/* of the announce */
			uint32_t flags;		/* VP_CHUNKS_* */
			uint32_t count;
			struct vp_chunk_offer chunk[VP_PROTO_CHUNKS_PER_MSG];
		} chunks;
		struct {
			uint64_t seq;
		} relay_done;
	} u;
};

/*
 * Encodes m into buf.  Returns the length, or -EMSGSIZE / -EINVAL (a field
 * that would not decode: callers validate their own paths with
 * vp_proto_check_path()).
 */
ssize_t vp_msg_encode(const struct vp_msg *m, void *buf, size_t len);

/*
 * Decodes and validates len bytes into *m.  Returns 0, or -EBADMSG with a
 * reason in why (for the log) when anything is off.
 */
int vp_msg_decode(const void *buf, size_t len, struct vp_msg *m,
		  const char **why);

/*
 * The type a message's header names, without decoding or validating the
 * rest (to route a raw message); -1 if len is shorter than a header.
 */
int vp_msg_peek_type(const void *buf, size_t len);

/* 0 if path is a valid relative mount path (see above), else -EINVAL. */
int vp_proto_check_path(const char *path);

/* 1 if mode's type is a FIFO, a socket or a character or block device (MKNOD), else 0. */
int vp_proto_special_mode(uint32_t mode);

const char *vp_msg_type_name(enum vp_msg_type t);

#endif
