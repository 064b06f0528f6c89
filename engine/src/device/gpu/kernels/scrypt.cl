/* rigfleet Scrypt (N=1024, r=1, p=1; RFC 7914) scan kernel, the same OpenCL C source for every
 * GPU route (see sha256d.cl for the routes and the RIGFLEET_PTX prelude).
 *
 * One work item hashes one nonce: nonce = base + global id. The header is both the password and
 * the salt. Per nonce: HMAC-SHA-256 keys from SHA-256(header) (one compression after the
 * host's midstate, then the ipad/opad states), PBKDF2 to 128 bytes (the first header block after
 * ipad is compressed once and reused by the four output blocks), ROMix with Salsa20/8 over a
 * 128 KiB scratchpad in global memory, then PBKDF2 to 32 bytes. Scratchpad entries are stored as
 * uint4s interleaved across work items ((j * 8 + q) * global size + id), so a warp's loads and
 * stores of one entry are contiguous.
 *
 * `hdr` holds 27 words: words 0..18 of the header (big-endian; word 19 is the nonce), then the
 * SHA-256 midstate of header bytes 0..64 at 19..26. Hashes whose top word (bytes 28..32 read little-endian) is at most `top` go to
 * `out` as in sha256d.cl; the host computes the full hash of each on the CPU and compares it with
 * the whole target.
 */

#ifdef RIGFLEET_PTX
typedef unsigned int uint;
typedef unsigned int uint4 __attribute__((ext_vector_type(4)));
#define GLOBAL_ID() \
    ((uint)__nvvm_read_ptx_sreg_ctaid_x() * (uint)__nvvm_read_ptx_sreg_ntid_x() + \
     (uint)__nvvm_read_ptx_sreg_tid_x())
#define GLOBAL_SIZE() ((uint)__nvvm_read_ptx_sreg_nctaid_x() * (uint)__nvvm_read_ptx_sreg_ntid_x())
#define ATOMIC_INC(p) ((uint)__nvvm_atom_add_gen_i((volatile int *)(p), 1))
#else
#define GLOBAL_ID() ((uint)get_global_id(0))
#define GLOBAL_SIZE() ((uint)get_global_size(0))
#define ATOMIC_INC(p) atomic_inc(p)
#endif

/* clang's NVPTX build left the 128-byte X array in local memory until every helper was forced
 * inline; OpenCL drivers (NVIDIA's, PoCL) inline on their own, and forcing it made PoCL's build of
 * this kernel take minutes, so the attribute is for the PTX build only. */
#ifdef RIGFLEET_PTX
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static
#endif

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))
#define BSWAP32(x) \
    (((x) >> 24) | (((x) >> 8) & 0x0000ff00u) | (((x) << 8) & 0x00ff0000u) | ((x) << 24))

/* Round constants (FIPS 180-4 4.2.2). */
__constant uint SK[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
    0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
    0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
    0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
    0xc67178f2u };

/* One SHA-256 compression of the 16 big-endian words `blk` into `s`. */
INLINE void sha256_compress(uint *s, const uint *blk)
{
    uint w[16];
#pragma unroll
    for (int i = 0; i < 16; i++) w[i] = blk[i];
    uint a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
#pragma unroll
    for (int i = 0; i < 64; i++) {
        uint wi;
        if (i < 16) {
            wi = w[i];
        } else {
            wi = w[i & 15] += SSIG1(w[(i - 2) & 15]) + w[(i - 7) & 15] + SSIG0(w[(i - 15) & 15]);
        }
        uint t1 = h + BSIG1(e) + CH(e, f, g) + SK[i] + wi;
        uint t2 = BSIG0(a) + MAJ(a, b, c);
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
}

INLINE void sha256_iv(uint *s)
{
    s[0] = 0x6a09e667u; s[1] = 0xbb67ae85u; s[2] = 0x3c6ef372u; s[3] = 0xa54ff53au;
    s[4] = 0x510e527fu; s[5] = 0x9b05688cu; s[6] = 0x1f83d9abu; s[7] = 0x5be0cd19u;
}

/* B = Salsa20/8(B ^ Bx) (RFC 7914 section 3), B and Bx 16 little-endian words. */
INLINE void xor_salsa8(uint *B, const uint *Bx)
{
    uint x[16];
#pragma unroll
    for (int i = 0; i < 16; i++) { B[i] ^= Bx[i]; x[i] = B[i]; }
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
        x[4] ^= ROTL(x[0] + x[12], 7);   x[8] ^= ROTL(x[4] + x[0], 9);
        x[12] ^= ROTL(x[8] + x[4], 13);  x[0] ^= ROTL(x[12] + x[8], 18);
        x[9] ^= ROTL(x[5] + x[1], 7);    x[13] ^= ROTL(x[9] + x[5], 9);
        x[1] ^= ROTL(x[13] + x[9], 13);  x[5] ^= ROTL(x[1] + x[13], 18);
        x[14] ^= ROTL(x[10] + x[6], 7);  x[2] ^= ROTL(x[14] + x[10], 9);
        x[6] ^= ROTL(x[2] + x[14], 13);  x[10] ^= ROTL(x[6] + x[2], 18);
        x[3] ^= ROTL(x[15] + x[11], 7);  x[7] ^= ROTL(x[3] + x[15], 9);
        x[11] ^= ROTL(x[7] + x[3], 13);  x[15] ^= ROTL(x[11] + x[7], 18);
        x[1] ^= ROTL(x[0] + x[3], 7);    x[2] ^= ROTL(x[1] + x[0], 9);
        x[3] ^= ROTL(x[2] + x[1], 13);   x[0] ^= ROTL(x[3] + x[2], 18);
        x[6] ^= ROTL(x[5] + x[4], 7);    x[7] ^= ROTL(x[6] + x[5], 9);
        x[4] ^= ROTL(x[7] + x[6], 13);   x[5] ^= ROTL(x[4] + x[7], 18);
        x[11] ^= ROTL(x[10] + x[9], 7);  x[8] ^= ROTL(x[11] + x[10], 9);
        x[9] ^= ROTL(x[8] + x[11], 13);  x[10] ^= ROTL(x[9] + x[8], 18);
        x[12] ^= ROTL(x[15] + x[14], 7); x[13] ^= ROTL(x[12] + x[15], 9);
        x[14] ^= ROTL(x[13] + x[12], 13); x[15] ^= ROTL(x[14] + x[13], 18);
    }
#pragma unroll
    for (int i = 0; i < 16; i++) B[i] += x[i];
}

/* PBKDF2 output block n: HMAC(header, header || INT(n)) from `inner` (the ipad state after the
 * header's first 64 bytes) and `ostate`, as 8 little-endian words (Scrypt reads bytes that way).
 * A function called four times rather than a loop, so that every index into X is a constant and
 * X stays in registers. */
INLINE void pbkdf2_block(
    uint n, const uint *inner, const uint *ostate, __global const uint *hdr, uint w3, uint *x8)
{
    uint s[8], blk[16];
#pragma unroll
    for (int i = 0; i < 8; i++) s[i] = inner[i];
    blk[0] = hdr[16]; blk[1] = hdr[17]; blk[2] = hdr[18]; blk[3] = w3;
    blk[4] = n; blk[5] = 0x80000000u;
#pragma unroll
    for (int i = 6; i < 15; i++) blk[i] = 0;
    blk[15] = (64 + 84) * 8;
    sha256_compress(s, blk);
#pragma unroll
    for (int i = 0; i < 8; i++) blk[i] = s[i];
    blk[8] = 0x80000000u;
#pragma unroll
    for (int i = 9; i < 15; i++) blk[i] = 0;
    blk[15] = (64 + 32) * 8;
#pragma unroll
    for (int i = 0; i < 8; i++) s[i] = ostate[i];
    sha256_compress(s, blk);
#pragma unroll
    for (int i = 0; i < 8; i++) x8[i] = BSWAP32(s[i]);
}

__kernel void scrypt_scan(__global const uint *hdr, uint base, uint top, uint capacity,
                          __global uint *out, __global uint4 *V)
{
    const uint id = GLOBAL_ID();
    const uint stride = GLOBAL_SIZE();
    const uint nonce = base + id;
    uint blk[16];
    uint s[8];
    uint istate[8], ostate[8], inner[8];
    uint X[32];

    /* HMAC key: SHA-256 of the 80-byte header (longer than a block), from the midstate. */
#pragma unroll
    for (int i = 0; i < 8; i++) s[i] = hdr[19 + i];
    blk[0] = hdr[16]; blk[1] = hdr[17]; blk[2] = hdr[18]; blk[3] = BSWAP32(nonce);
    blk[4] = 0x80000000u;
#pragma unroll
    for (int i = 5; i < 15; i++) blk[i] = 0;
    blk[15] = 640u;
    sha256_compress(s, blk);
    const uint w3 = BSWAP32(nonce);

    /* ipad and opad states. */
#pragma unroll
    for (int i = 0; i < 8; i++) blk[i] = s[i] ^ 0x36363636u;
#pragma unroll
    for (int i = 8; i < 16; i++) blk[i] = 0x36363636u;
    sha256_iv(istate);
    sha256_compress(istate, blk);
#pragma unroll
    for (int i = 0; i < 8; i++) blk[i] = s[i] ^ 0x5c5c5c5cu;
#pragma unroll
    for (int i = 8; i < 16; i++) blk[i] = 0x5c5c5c5cu;
    sha256_iv(ostate);
    sha256_compress(ostate, blk);

    /* PBKDF2 block i (1..4) = HMAC(header, header || INT(i)); the header's first 64 bytes are
     * the same for every i. */
#pragma unroll
    for (int i = 0; i < 8; i++) inner[i] = istate[i];
#pragma unroll
    for (int i = 0; i < 16; i++) blk[i] = hdr[i];
    sha256_compress(inner, blk);
    pbkdf2_block(1, inner, ostate, hdr, w3, &X[0]);
    pbkdf2_block(2, inner, ostate, hdr, w3, &X[8]);
    pbkdf2_block(3, inner, ostate, hdr, w3, &X[16]);
    pbkdf2_block(4, inner, ostate, hdr, w3, &X[24]);

    /* ROMix. */
    for (uint j = 0; j < 1024; j++) {
#pragma unroll
        for (uint q = 0; q < 8; q++)
            V[(j * 8 + q) * stride + id] =
                (uint4)(X[4 * q], X[4 * q + 1], X[4 * q + 2], X[4 * q + 3]);
        xor_salsa8(&X[0], &X[16]);
        xor_salsa8(&X[16], &X[0]);
    }
    for (uint j = 0; j < 1024; j++) {
        const uint k = X[16] & 1023u;
#pragma unroll
        for (uint q = 0; q < 8; q++) {
            uint4 v = V[(k * 8 + q) * stride + id];
            X[4 * q] ^= v.x; X[4 * q + 1] ^= v.y; X[4 * q + 2] ^= v.z; X[4 * q + 3] ^= v.w;
        }
        xor_salsa8(&X[0], &X[16]);
        xor_salsa8(&X[16], &X[0]);
    }

    /* PBKDF2 to 32 bytes: HMAC(header, B' || INT(1)). */
#pragma unroll
    for (int i = 0; i < 8; i++) s[i] = istate[i];
#pragma unroll
    for (int i = 0; i < 16; i++) blk[i] = BSWAP32(X[i]);
    sha256_compress(s, blk);
#pragma unroll
    for (int i = 0; i < 16; i++) blk[i] = BSWAP32(X[16 + i]);
    sha256_compress(s, blk);
    blk[0] = 1; blk[1] = 0x80000000u;
#pragma unroll
    for (int i = 2; i < 15; i++) blk[i] = 0;
    blk[15] = (64 + 132) * 8;
    sha256_compress(s, blk);
#pragma unroll
    for (int i = 0; i < 8; i++) blk[i] = s[i];
    blk[8] = 0x80000000u;
#pragma unroll
    for (int i = 9; i < 15; i++) blk[i] = 0;
    blk[15] = (64 + 32) * 8;
#pragma unroll
    for (int i = 0; i < 8; i++) s[i] = ostate[i];
    sha256_compress(s, blk);

    if (BSWAP32(s[7]) <= top) {
        uint slot = ATOMIC_INC(&out[0]);
        if (slot < capacity) {
            out[1 + slot] = nonce;
        }
    }
}
