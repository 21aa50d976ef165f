/*
 * sess: an authenticated session between two peers of replication --
 * the keys a handshake derives, and the sealing of every message after it.
 *
 * The HELLO/CHALLENGE/AUTH handshake proves that both sides hold the
 * shared secret (HMAC-SHA256 over both nonces).  Both then derive the
 * session's keys with HKDF-SHA256 (the secret as input key material, the
 * two nonces as salt, a label and the consumer's id as info): one key per
 * direction, so a message can never be reflected back to its sender.
 *
 * SEALED MESSAGES: every later message is sealed with ChaCha20-Poly1305.
 * On the wire it is the ordinary 20-byte header (proto.h) with
 * VP_SESS_SEALED set in its type and the length of what follows, then a
 * 64-bit sequence number, the encrypted payload and a 16-byte tag.  The
 * header and the sequence number are authenticated (not encrypted), so a
 * peer id or a type cannot be changed in flight.  The nonce is the
 * sequence number: each direction's key never sees it twice.  A receiver
 * accepts only sequence numbers above the last one it accepted: replays
 * and messages out of order are dropped (the transport is reliable and
 * ordered, so a gap means a message was dropped by us, never reordered).
 *
 * Bulk data is not sealed: RMA reads move it, and each chunk is checked
 * against the xxh3 hash that its sealed ANNOUNCE carries.
 *
 * THREADING: a struct vp_sess is not locked.  Its owner says who may
 * seal with it (repl: the repl thread, and the beat thread's heartbeats,
 * both under repl's tx_lock, which also orders the sends).
 */
#ifndef VP_SESS_H
#define VP_SESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define VP_SESS_KEY 32
#define VP_SESS_TAG 16
#define VP_SESS_OVERHEAD (8 + VP_SESS_TAG)	/* sequence number, tag */
#define VP_SESS_SEALED 0x8000u			/* in the header's type */

struct vp_sess_dir {
	uint8_t key[VP_SESS_KEY];
	uint64_t seq;		/* tx: the last one sent; rx: the last one accepted */
};

struct vp_sess {
	int on;			/* keys derived: every message is sealed */
	struct vp_sess_dir tx, rx;
	uint64_t dropped;	/* messages that failed to open, or replayed */
};

/*
 * Derives the session's keys: HKDF-SHA256(ikm, salt, "viperfs <label> "
 * + id), 64 bytes, the first half for the direction named first_label
 * (label "p2c" or "c2p" etc.).  tx_first: this side sends with the first
 * half.  Resets the sequence numbers.  Returns 0 or -EIO.
 */
int vp_sess_derive(struct vp_sess *s, const uint8_t *ikm, size_t ikm_len,
		   const uint8_t *salt, size_t salt_len, const char *label,
		   uint64_t id, int tx_first);

/*
 * The key a secret file's contents stand for: scrypt (N=2^14, r=8, p=1)
 * of them, 32 bytes into out.  The handshake's HMACs and the sessions'
 * keys are made from it, so that guessing a weak secret offline from a
 * CHALLENGE (anyone can ask for one) costs an scrypt per guess.  About
 * 40 ms, once at start.  Returns 0 or -EIO.
 */
int vp_sess_stretch(const uint8_t *secret, size_t len, uint8_t out[VP_SESS_KEY]);

/*
 * A handshake proof: HMAC-SHA256 under key (the stretched secret) of role
 * (6 bytes: "VPR1-P" from the producer, "VPR1-C" from the consumer), the
 * two nonces (VP_PROTO_NONCE each) in that order, and the consumer's id;
 * VP_PROTO_MAC bytes into out.  Without a key (len 0), zeros: no proof.
 */
void vp_sess_handshake_mac(const uint8_t *key, size_t key_len, const char *role,
			   const uint8_t *n1, const uint8_t *n2, uint64_t id, uint8_t *out);

/* Forgets the keys (the session ended). */
void vp_sess_clear(struct vp_sess *s);

/*
 * Seals the encoded message msg[0..len) (header and payload) into out.
 * Returns the sealed length, -EMSGSIZE if out is too small, -EINVAL for
 * a message shorter than a header or a session without keys, or -EIO.
 */
ssize_t vp_sess_seal(struct vp_sess *s, const void *msg, size_t len, void *out,
		     size_t outlen);

/*
 * Takes back the message sealed last, which was never sent (the transport
 * would not take it): its sequence number is used again, so the receiver
 * sees no gap.  Only before any other message is sealed, and only for a
 * message nobody saw: a number is never used for two messages that left.
 */
void vp_sess_unseal(struct vp_sess *s);

/*
 * Opens a sealed message into out (header and payload, as vp_msg_decode()
 * takes them).  Returns the plaintext length, or -EBADMSG (not sealed,
 * malformed, or its tag does not match: forged, or sealed with another
 * key) or -EALREADY (a sequence number already seen: a replay, or out of
 * order), with a reason in why.  Nothing changes in s on failure, except
 * the count of dropped messages.
 */
ssize_t vp_sess_open(struct vp_sess *s, const void *in, size_t len, void *out,
		     size_t outlen, const char **why);

/* 1 if the message in buf[0..len) says it is sealed (not a check of the seal). */
int vp_sess_is_sealed(const void *buf, size_t len);

#endif
