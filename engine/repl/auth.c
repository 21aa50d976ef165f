/*
 * repl/auth.c: the keys: the secret, the handshake's MACs, the sessions and the
 * relay edges' keys (the sealing itself is sess.c's).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>
#include <sys/stat.h>

#include "../log.h"
#include "repl_i.h"

void repl_mac_of(struct vp_repl *r, const char *role, const uint8_t *n1,
		 const uint8_t *n2, uint64_t id, uint8_t *out)
{
	vp_sess_handshake_mac(r->secret, r->secret_len, role, n1, n2, id, out);
}

int repl_mac_ok(struct vp_repl *r, const char *role, const uint8_t *n1,
		const uint8_t *n2, uint64_t id, const uint8_t *got)
{
	uint8_t want[VP_PROTO_MAC];

	repl_mac_of(r, role, n1, n2, id, want);
	return CRYPTO_memcmp(want, got, VP_PROTO_MAC) == 0;
}

int repl_load_secret(struct vp_repl *r, char *err, size_t errlen)
{
	FILE *f;
	size_t n;

	if (!r->cfg.secret_file[0]) {
		vp_log(LOG_WARNING, "repl", "no secret_file: peers are checked by address only, and messages are not sealed: anyone on the fabric network can read what is announced and inject messages; set one on every node");
		return 0;
	}
	f = fopen(r->cfg.secret_file, "re");
	if (!f) {
		int saved = errno;	/* snprintf may change it */

		snprintf(err, errlen, "secret_file '%s': %s", r->cfg.secret_file, strerror(saved));
		return -saved;
	}
	{
		struct stat st;

		if (!fstat(fileno(f), &st) && (st.st_mode & 077))
			vp_log(LOG_WARNING, "repl", "secret_file '%s' is readable by other users (mode %04o); chmod 600 it",
			       r->cfg.secret_file, (unsigned int)(st.st_mode & 07777));
	}
	n = fread(r->secret, 1, sizeof(r->secret), f);
	fclose(f);
	while (n && (r->secret[n - 1] == '\n' || r->secret[n - 1] == '\r'))
		n--;
	if (n < 16) {
		snprintf(err, errlen, "secret_file '%s' holds %zu bytes; use at least 16 (e.g. openssl rand -hex 32)",
			 r->cfg.secret_file, n);
		OPENSSL_cleanse(r->secret, sizeof(r->secret));
		return -EINVAL;
	}
	/* what the file says is stretched once: a CHALLENGE is no cheap oracle for guesses */
	{
		uint8_t key[VP_SESS_KEY];
		int rc = vp_sess_stretch(r->secret, n, key);

		OPENSSL_cleanse(r->secret, sizeof(r->secret));
		memcpy(r->secret, key, sizeof(key));
		OPENSSL_cleanse(key, sizeof(key));
		if (rc) {
			snprintf(err, errlen, "secret_file '%s': cannot derive its key", r->cfg.secret_file);
			return -EIO;
		}
	}
	n = VP_SESS_KEY;
	r->secret_len = n;
	RAND_bytes(r->prod.edge_secret, sizeof(r->prod.edge_secret));
	return 0;
}

/*
 * The session of an authenticated consumer: keys from the secret and
 * both nonces (sess.h); the producer sends with the first half.
 */
int repl_session_derive(struct vp_repl *r, struct vp_sess *s, const uint8_t *nonce_c,
			const uint8_t *nonce_p, uint64_t id, int producer)
{
	uint8_t salt[2 * VP_PROTO_NONCE];

	vp_sess_clear(s);
	if (!r->secret_len)
		return 0;	/* no secret: nothing to seal with */
	memcpy(salt, nonce_c, VP_PROTO_NONCE);
	memcpy(salt + VP_PROTO_NONCE, nonce_p, VP_PROTO_NONCE);
	return vp_sess_derive(s, r->secret, r->secret_len, salt, sizeof(salt), "session", id,
			      producer);
}

/*
 * Producer: the key of the relay edge parent -> child, for both ends'
 * TOPO.  gen is the edge's generation: an edge made again (the tree
 * changed and changed back) gets a new key, so no key ever starts its
 * sequence numbers twice.
 */
void repl_edge_key_of(struct vp_repl *r, uint64_t parent, uint64_t child, uint64_t gen,
		      uint8_t *out)
{
	uint8_t msg[4 + 24];
	unsigned int len = VP_PROTO_EDGE_KEY;

	if (!r->secret_len) {
		memset(out, 0, VP_PROTO_EDGE_KEY);
		return;
	}
	memcpy(msg, "edge", 4);
	for (int i = 0; i < 8; i++) {
		msg[4 + i] = (uint8_t)(parent >> (8 * i));
		msg[12 + i] = (uint8_t)(child >> (8 * i));
		msg[20 + i] = (uint8_t)(gen >> (8 * i));
	}
	HMAC(EVP_sha256(), r->prod.edge_secret, sizeof(r->prod.edge_secret), msg, sizeof(msg), out, &len);
}

/* Consumer: the session of a relay edge, from the key its TOPO gave. */
void repl_edge_session(struct vp_repl *r, struct vp_sess *s, const uint8_t *key,
		       uint64_t parent, uint64_t child, int i_am_parent)
{
	uint8_t salt[16];

	vp_sess_clear(s);
	if (!r->secret_len)
		return;
	for (int i = 0; i < 8; i++) {
		salt[i] = (uint8_t)(parent >> (8 * i));
		salt[8 + i] = (uint8_t)(child >> (8 * i));
	}
	if (vp_sess_derive(s, key, VP_PROTO_EDGE_KEY, salt, sizeof(salt), "relay", child,
			   i_am_parent))
		vp_log(LOG_ERR, "repl", "relay: cannot derive the keys of an edge; its messages will be refused");
}
