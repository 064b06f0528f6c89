/* rigfleet SHA-256d scan kernel: one OpenCL C source for every GPU route.
 *
 * - OpenCL (PoCL in tests, a vendor driver on a card): built at run time from this text.
 * - NVIDIA cards without an OpenCL driver: scripts/build-ptx.sh compiles this same file with
 *   clang's NVPTX target with RIGFLEET_PTX defined, and the PTX is loaded through the CUDA driver
 *   API. The prelude below maps the few OpenCL built-ins used here to NVPTX built-ins. (Not
 *   `__NVPTX__`: NVIDIA's own OpenCL compiler defines it too, and has the OpenCL built-ins.)
 *
 * One work item hashes one nonce: nonce = base + global id. The host precomputes what does not
 * depend on the nonce (engine/src/algo/sha256d/precomp.rs): the midstate of header bytes 0..64,
 * the state entering round 4 of the second block computed with W3 = 0 (a and e still need W3),
 * W16, W17, and the constant parts of W18 and W19. The second hash stops after round 60: the
 * final state word 7 is `e` after round 60 plus IV[7] (rounds 61..63 only shift it along), so
 * the top word of the hash is known three rounds early. Nonces whose top word (read
 * little-endian, as Bitcoin compares hashes) is at or below `top` are appended to `out`:
 * out[0] counts them (it may exceed the capacity; the host then rescans that launch on the CPU),
 * out[1 + i] holds them in no particular order. The host rechecks every one with the portable
 * CPU code before it counts.
 */

#ifdef RIGFLEET_PTX
typedef unsigned int uint;
#define GLOBAL_ID() \
    ((uint)__nvvm_read_ptx_sreg_ctaid_x() * (uint)__nvvm_read_ptx_sreg_ntid_x() + \
     (uint)__nvvm_read_ptx_sreg_tid_x())
#define ATOMIC_INC(p) ((uint)__nvvm_atom_add_gen_i((volatile int *)(p), 1))
#else
#define GLOBAL_ID() ((uint)get_global_id(0))
#define ATOMIC_INC(p) atomic_inc(p)
#endif

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))
#define BSWAP32(x) \
    (((x) >> 24) | (((x) >> 8) & 0x0000ff00u) | (((x) << 8) & 0x00ff0000u) | ((x) << 24))

/* One round: the eight working variables are named by the caller in rotated order, so no value
 * moves between registers. */
#define RND(a, b, c, d, e, f, g, h, kw)                        \
    do {                                                       \
        uint t1_ = (h) + BSIG1(e) + CH(e, f, g) + (kw);        \
        (d) += t1_;                                            \
        (h) = t1_ + BSIG0(a) + MAJ(a, b, c);                   \
    } while (0)

/* Message expansion in a 16-word window: W[i] for i >= 16, stored over W[i - 16]. */
#define EXP(w, i) \
    (w[(i) & 15] += SSIG1(w[((i) - 2) & 15]) + w[((i) - 7) & 15] + SSIG0(w[((i) - 15) & 15]))

/* Eight rounds starting at round i (a multiple of 8), message words from the window. */
#define ROUNDS8(i, w)                                          \
    RND(a, b, c, d, e, f, g, h, K[(i) + 0] + w[((i) + 0) & 15]); \
    RND(h, a, b, c, d, e, f, g, K[(i) + 1] + w[((i) + 1) & 15]); \
    RND(g, h, a, b, c, d, e, f, K[(i) + 2] + w[((i) + 2) & 15]); \
    RND(f, g, h, a, b, c, d, e, K[(i) + 3] + w[((i) + 3) & 15]); \
    RND(e, f, g, h, a, b, c, d, K[(i) + 4] + w[((i) + 4) & 15]); \
    RND(d, e, f, g, h, a, b, c, K[(i) + 5] + w[((i) + 5) & 15]); \
    RND(c, d, e, f, g, h, a, b, K[(i) + 6] + w[((i) + 6) & 15]); \
    RND(b, c, d, e, f, g, h, a, K[(i) + 7] + w[((i) + 7) & 15])

#define EXP8(w, i) \
    EXP(w, (i) + 0); EXP(w, (i) + 1); EXP(w, (i) + 2); EXP(w, (i) + 3); \
    EXP(w, (i) + 4); EXP(w, (i) + 5); EXP(w, (i) + 6); EXP(w, (i) + 7)

/* Round constants (FIPS 180-4 4.2.2); a program-scope constant table indexed only with literal
 * indices, so every compiler folds the values into the instructions. */
__constant uint K[64] = { 0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
      0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
      0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
      0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
      0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
      0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
      0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
      0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
      0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
      0xc67178f2u };

__kernel void sha256d_scan(
    uint m0, uint m1, uint m2, uint m3, uint m4, uint m5, uint m6, uint m7,
    uint s0, uint s1, uint s2, uint s3, uint s4, uint s5, uint s6, uint s7,
    uint w16, uint w17, uint w18_base, uint w19_base,
    uint base, uint top, uint capacity, __global uint *out)
{
    const uint nonce = base + GLOBAL_ID();
    const uint w3 = BSWAP32(nonce);

    /* First hash, second block, from round 4 (rounds 0..3 ran on the host with W3 = 0; W3
     * enters round 3 only through T1, so a and e take it now). */
    /* The round macro takes the variables in rotated order; round 4 is the fifth of a group of
     * eight, so the logical a..h of round 4 live in the variables e, f, g, h, a, b, c, d. */
    uint e = s0 + w3, f = s1, g = s2, h = s3, a = s4 + w3, b = s5, c = s6, d = s7;
    uint w[16];
    /* W0..W2 are the header tail: they were only needed by rounds 0..2 and by W16..W18, whose
     * constant parts came from the host; their slots are filled with W16..W18 below before the
     * window reads them again. */
    w[0] = 0; w[1] = 0; w[2] = 0; w[3] = w3;
    w[4] = 0x80000000u; w[5] = 0; w[6] = 0; w[7] = 0;
    w[8] = 0; w[9] = 0; w[10] = 0; w[11] = 0;
    w[12] = 0; w[13] = 0; w[14] = 0; w[15] = 640u;
    /* Rounds 4..7 (the macro for eight rounds starts at a multiple of 8). */
    RND(e, f, g, h, a, b, c, d, K[4] + w[4]);
    RND(d, e, f, g, h, a, b, c, K[5] + w[5]);
    RND(c, d, e, f, g, h, a, b, K[6] + w[6]);
    RND(b, c, d, e, f, g, h, a, K[7] + w[7]);
    ROUNDS8(8, w);
    w[0] = w16;
    w[1] = w17;
    w[2] = w18_base + SSIG0(w3);
    w[3] = w19_base + w3;
    EXP(w, 20); EXP(w, 21); EXP(w, 22); EXP(w, 23);
    ROUNDS8(16, w);
    EXP8(w, 24); ROUNDS8(24, w);
    EXP8(w, 32); ROUNDS8(32, w);
    EXP8(w, 40); ROUNDS8(40, w);
    EXP8(w, 48); ROUNDS8(48, w);
    EXP8(w, 56); ROUNDS8(56, w);

    /* Second hash over the 32-byte digest. */
    uint v[16];
    v[0] = m0 + a; v[1] = m1 + b; v[2] = m2 + c; v[3] = m3 + d;
    v[4] = m4 + e; v[5] = m5 + f; v[6] = m6 + g; v[7] = m7 + h;
    v[8] = 0x80000000u; v[9] = 0; v[10] = 0; v[11] = 0;
    v[12] = 0; v[13] = 0; v[14] = 0; v[15] = 256u;
    a = 0x6a09e667u; b = 0xbb67ae85u; c = 0x3c6ef372u; d = 0xa54ff53au;
    e = 0x510e527fu; f = 0x9b05688cu; g = 0x1f83d9abu; h = 0x5be0cd19u;
    ROUNDS8(0, v);
    ROUNDS8(8, v);
    EXP8(v, 16); ROUNDS8(16, v);
    EXP8(v, 24); ROUNDS8(24, v);
    EXP8(v, 32); ROUNDS8(32, v);
    EXP8(v, 40); ROUNDS8(40, v);
    EXP8(v, 48); ROUNDS8(48, v);
    /* Rounds 56..60: after round 60 the new e sits in the variable named d at round 60's call
     * (the call for round 56 + k passes the rotation for k = 4, whose d slot is `h`). */
    EXP(v, 56); EXP(v, 57); EXP(v, 58); EXP(v, 59); EXP(v, 60);
    RND(a, b, c, d, e, f, g, h, K[56] + v[56 & 15]);
    RND(h, a, b, c, d, e, f, g, K[57] + v[57 & 15]);
    RND(g, h, a, b, c, d, e, f, K[58] + v[58 & 15]);
    RND(f, g, h, a, b, c, d, e, K[59] + v[59 & 15]);
    RND(e, f, g, h, a, b, c, d, K[60] + v[60 & 15]);
    /* Round 60 added T1 to the variable in the d position of that call: `h`. */
    const uint top_word = BSWAP32(h + 0x5be0cd19u);
    if (top_word <= top) {
        uint slot = ATOMIC_INC(&out[0]);
        if (slot < capacity) {
            out[1 + slot] = nonce;
        }
    }
}
