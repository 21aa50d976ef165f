/* sess: see sess.h. */
#define _GNU_SOURCE
#include "sess.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <stdio.h>
#include <string.h>

#include "proto.h"

/* Offsets in the header (proto.h): magic 0, version 4, type 6, length 8, peer id 12. */
#define HDR_TYPE 6
#define HDR_LEN 8

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

int vp_sess_derive(struct vp_sess *s, const uint8_t *ikm, size_t ikm_len,
		   const uint8_t *salt, size_t salt_len, const char *label,
		   uint64_t id, int tx_first)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	uint8_t out[2 * VP_SESS_KEY];
	char info[96];
	size_t outlen = sizeof(out);
	int n, rc = -EIO;

	n = snprintf(info, sizeof(info), "viperfs %s %llu", label, (unsigned long long)id);
	if (!ctx || n < 0 || (size_t)n >= sizeof(info))
		goto out;
	if (EVP_PKEY_derive_init(ctx) <= 0 ||
	    EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) <= 0 ||
	    EVP_PKEY_CTX_set1_hkdf_salt(ctx, salt, (int)salt_len) <= 0 ||
	    EVP_PKEY_CTX_set1_hkdf_key(ctx, ikm, (int)ikm_len) <= 0 ||
	    EVP_PKEY_CTX_add1_hkdf_info(ctx, (const unsigned char *)info, n) <= 0 ||
	    EVP_PKEY_derive(ctx, out, &outlen) <= 0 || outlen != sizeof(out))
		goto out;
	memcpy(s->tx.key, tx_first ? out : out + VP_SESS_KEY, VP_SESS_KEY);
	memcpy(s->rx.key, tx_first ? out + VP_SESS_KEY : out, VP_SESS_KEY);
	s->tx.seq = s->rx.seq = 0;
	s->on = 1;
	rc = 0;
out:
	OPENSSL_cleanse(out, sizeof(out));
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

int vp_sess_stretch(const uint8_t *secret, size_t len, uint8_t out[VP_SESS_KEY])
{
	static const unsigned char salt[] = "viperfs secret v1";

	return EVP_PBE_scrypt((const char *)secret, len, salt, sizeof(salt) - 1, 1u << 14, 8, 1,
			      64u << 20, out, VP_SESS_KEY) == 1 ? 0 : -EIO;
}

void vp_sess_handshake_mac(const uint8_t *key, size_t key_len, const char *role,
			   const uint8_t *n1, const uint8_t *n2, uint64_t id, uint8_t *out)
{
	uint8_t msg[6 + 2 * VP_PROTO_NONCE + 8];
	unsigned int len = VP_PROTO_MAC;

	memcpy(msg, role, 6);
	memcpy(msg + 6, n1, VP_PROTO_NONCE);
	memcpy(msg + 6 + VP_PROTO_NONCE, n2, VP_PROTO_NONCE);
	put_le(msg + 6 + 2 * VP_PROTO_NONCE, id, 8);
	if (!key_len) {
		memset(out, 0, VP_PROTO_MAC);
		return;
	}
	HMAC(EVP_sha256(), key, (int)key_len, msg, sizeof(msg), out, &len);
}

void vp_sess_clear(struct vp_sess *s)
{
	OPENSSL_cleanse(s, sizeof(*s));
}

int vp_sess_is_sealed(const void *buf, size_t len)
{
	return len >= VP_PROTO_HDR &&
	       (get_le((const uint8_t *)buf + HDR_TYPE, 2) & VP_SESS_SEALED) != 0;
}

/* The AEAD nonce of a sequence number: 4 zero bytes, then the number. */
static void nonce_of(uint64_t seq, uint8_t nonce[12])
{
	memset(nonce, 0, 4);
	put_le(nonce + 4, seq, 8);
}

ssize_t vp_sess_seal(struct vp_sess *s, const void *msg, size_t len, void *out,
		     size_t outlen)
{
	const uint8_t *in = msg;
	uint8_t *o = out, nonce[12];
	size_t plen = len - VP_PROTO_HDR, total = len + VP_SESS_OVERHEAD;
	EVP_CIPHER_CTX *ctx;
	uint64_t seq;
	int n, rc = -EIO;

	if (len < VP_PROTO_HDR || !s->on)
		return -EINVAL;
	if (total > outlen || total - VP_PROTO_HDR > UINT32_MAX)
		return -EMSGSIZE;
	seq = s->tx.seq + 1;
	memcpy(o, in, VP_PROTO_HDR);
	put_le(o + HDR_TYPE, get_le(in + HDR_TYPE, 2) | VP_SESS_SEALED, 2);
	put_le(o + HDR_LEN, total - VP_PROTO_HDR, 4);
	put_le(o + VP_PROTO_HDR, seq, 8);
	nonce_of(seq, nonce);
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return -EIO;
	if (EVP_EncryptInit_ex(ctx, EVP_chacha20_poly1305(), NULL, s->tx.key, nonce) != 1 ||
	    EVP_EncryptUpdate(ctx, NULL, &n, o, VP_PROTO_HDR + 8) != 1 ||	/* AAD */
	    (plen && EVP_EncryptUpdate(ctx, o + VP_PROTO_HDR + 8, &n, in + VP_PROTO_HDR,
				       (int)plen) != 1) ||
	    EVP_EncryptFinal_ex(ctx, o + VP_PROTO_HDR + 8 + plen, &n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, VP_SESS_TAG,
				o + VP_PROTO_HDR + 8 + plen) != 1)
		goto out;
	s->tx.seq = seq;
	rc = 0;
out:
	EVP_CIPHER_CTX_free(ctx);
	return rc ? rc : (ssize_t)total;
}

void vp_sess_unseal(struct vp_sess *s)
{
	if (s->on && s->tx.seq)
		s->tx.seq--;
}

ssize_t vp_sess_open(struct vp_sess *s, const void *msg, size_t len, void *out,
		     size_t outlen, const char **why)
{
	const uint8_t *in = msg;
	uint8_t *o = out, nonce[12], tag[VP_SESS_TAG];
	const char *reason = NULL;
	EVP_CIPHER_CTX *ctx = NULL;
	size_t plen;
	uint64_t seq;
	ssize_t rc = -EBADMSG;
	int n;

	if (!s->on) {
		reason = "no session keys";
		goto out;
	}
	if (len < VP_PROTO_HDR + VP_SESS_OVERHEAD || !vp_sess_is_sealed(in, len)) {
		reason = "not a sealed message";
		goto out;
	}
	if (get_le(in + HDR_LEN, 4) != len - VP_PROTO_HDR) {
		reason = "sealed length does not match the message";
		goto out;
	}
	plen = len - VP_PROTO_HDR - VP_SESS_OVERHEAD;
	if (VP_PROTO_HDR + plen > outlen) {
		reason = "sealed message too long";
		goto out;
	}
	seq = get_le(in + VP_PROTO_HDR, 8);
	nonce_of(seq, nonce);
	memcpy(tag, in + len - VP_SESS_TAG, VP_SESS_TAG);
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx) {
		reason = "out of memory";
		goto out;
	}
	if (EVP_DecryptInit_ex(ctx, EVP_chacha20_poly1305(), NULL, s->rx.key, nonce) != 1 ||
	    EVP_DecryptUpdate(ctx, NULL, &n, in, VP_PROTO_HDR + 8) != 1 ||
	    (plen && EVP_DecryptUpdate(ctx, o + VP_PROTO_HDR, &n, in + VP_PROTO_HDR + 8,
				       (int)plen) != 1) ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, VP_SESS_TAG, tag) != 1 ||
	    EVP_DecryptFinal_ex(ctx, o + VP_PROTO_HDR + plen, &n) != 1) {
		reason = "its tag does not match (forged, damaged, or sealed with another key)";
		OPENSSL_cleanse(o + VP_PROTO_HDR, plen);
		goto out;
	}
	if (seq <= s->rx.seq) {
		/* authentic but seen before: a replay (checked after the tag, so a
		 * forger cannot probe our counter) */
		reason = "replayed or out of order";
		rc = -EALREADY;
		OPENSSL_cleanse(o + VP_PROTO_HDR, plen);
		goto out;
	}
	s->rx.seq = seq;
	memcpy(o, in, VP_PROTO_HDR);
	put_le(o + HDR_TYPE, get_le(in + HDR_TYPE, 2) & ~VP_SESS_SEALED, 2);
	put_le(o + HDR_LEN, plen, 4);
	rc = (ssize_t)(VP_PROTO_HDR + plen);
out:
	EVP_CIPHER_CTX_free(ctx);
	if (rc < 0)
		s->dropped++;
	if (why)
		*why = reason;
	return rc;
}
