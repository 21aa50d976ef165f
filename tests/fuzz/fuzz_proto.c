/*
 * libFuzzer target for the replication wire decoder (make fuzz): any
 * input must be refused cleanly or decode into a message that encodes
 * back to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct vp_msg m;
	static uint8_t out[1 << 17];
	const char *why;
	ssize_t n;

	if (vp_msg_decode(data, size, &m, &why))
		return 0;
	n = vp_msg_encode(&m, out, sizeof(out));
	if (n != (ssize_t)size || memcmp(out, data, size))
		abort();	/* a valid message must re-encode to itself */
	return 0;
}
