//! The one table of small-order curve points, for both uses SREMP has for it.
//!
//! Curve25519 has 8 points of order dividing 8. Their encodings are refused in two places:
//! - as an X25519 (Montgomery `u`) Noise static key or public key: any clamped scalar gives the
//!   all-zero shared secret with them ([`is_low_order_x25519`], libsodium's `has_small_order`
//!   set), checked by identity validation and the Noise handshake;
//! - as the `R` of an Ed25519 (Edwards `y`) signature that goes into a batch
//!   ([`is_small_order_edwards_y`]): `verify_strict` refuses these, so the batch must too.
//!
//! Both lists contain the encodings of `0`, `1`, `p − 1` and the non-canonical `p` and `p + 1`
//! (`p = 2^255 − 19`); only the order-8 rows differ between the two coordinates, so each list is
//! written here from the shared rows plus its own two. The top (sign) bit is ignored in both
//! checks, as X25519 ignores it and as either sign of `y` is small order.
//!
//! Pure data and comparisons: no I/O, no allocation.

/// `0`.
const ZERO: [u8; 32] = [0; 32];

/// `1`.
const ONE: [u8; 32] = [
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// `p − 1` (≡ −1).
const P_MINUS_1: [u8; 32] = [
    0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
];

/// `p` (≡ 0, non-canonical).
const P: [u8; 32] = [
    0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
];

/// `p + 1` (≡ 1, non-canonical).
const P_PLUS_1: [u8; 32] = [
    0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
];

/// X25519 `u` of the two points of order 8.
const U_ORDER_8: [[u8; 32]; 2] = [
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
];

/// Edwards `±y8` of the points of order 8.
const Y_ORDER_8: [[u8; 32]; 2] = [
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
];

/// X25519 `u`-coordinates of small order (libsodium's blocklist): `0` (order 4), `1` (order 1),
/// the two of order 8, `p − 1` (order 2), and the non-canonical `p` and `p + 1`.
pub const LOW_ORDER_POINTS: [[u8; 32]; 7] = [
    ZERO,
    ONE,
    U_ORDER_8[0],
    U_ORDER_8[1],
    P_MINUS_1,
    P,
    P_PLUS_1,
];

/// The `y` fields (sign bit cleared) of every Ed25519 encoding that decodes to a point of small
/// order: `y ≡ 1` (the identity: `1` and the non-canonical `p + 1`), `y ≡ −1` (order 2),
/// `y ≡ 0` (order 4: `0` and the non-canonical `p`), and `±y8` (order 8). With either sign bit
/// these are all 14 small-order encodings that `verify_strict` refuses as `R`.
pub const SMALL_ORDER_Y: [[u8; 32]; 7] = [
    ZERO,
    ONE,
    P_MINUS_1,
    P,
    P_PLUS_1,
    Y_ORDER_8[0],
    Y_ORDER_8[1],
];

/// True for the all-zero key and every X25519 point of small order (the inputs for which any
/// clamped scalar gives the all-zero shared secret), including non-canonical encodings and with
/// the unused top bit ignored. Constant time in the key.
pub fn is_low_order_x25519(key: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    let mut k = *key;
    k[31] &= 0x7f;
    let mut hit = subtle::Choice::from(0u8);
    for bad in &LOW_ORDER_POINTS {
        hit |= k.ct_eq(bad);
    }
    // Only u < 19 has a second (non-canonical) encoding below 2^255, so p and p + 1 above
    // complete the set; the top bit is ignored as X25519 ignores it.
    bool::from(hit)
}

/// True if `r` is one of the Ed25519 encodings of a small-order point (any sign bit).
pub fn is_small_order_edwards_y(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    SMALL_ORDER_Y.contains(&y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{SigningKey, VerifyingKey};

    #[test]
    fn low_order_list_matches_x25519() {
        // Every blocklisted point gives an all-zero shared secret with a random scalar.
        let s = x25519_dalek::StaticSecret::from([9u8; 32]);
        for k in LOW_ORDER_POINTS {
            assert!(is_low_order_x25519(&k));
            let mut high = k;
            high[31] |= 0x80;
            assert!(is_low_order_x25519(&high));
            assert!(!s
                .diffie_hellman(&x25519_dalek::PublicKey::from(k))
                .was_contributory());
        }
        let good = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([4u8; 32]));
        assert!(!is_low_order_x25519(good.as_bytes()));
    }

    #[test]
    fn small_order_list_matches_verify_strict() {
        let mut decoded = 0;
        for y in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut r = y;
                r[31] |= sign;
                assert!(is_small_order_edwards_y(&r));
                // Every listed encoding is refused as R by verify_strict: it does not decode,
                // or decodes to a point of small order.
                if let Ok(p) = VerifyingKey::from_bytes(&r) {
                    assert!(p.is_weak(), "{}", hex::encode(r));
                    decoded += 1;
                }
            }
        }
        // All 14 decode: the 8 points of order dividing 8 (canonical), the identity and the
        // point of order 2 with the sign bit set (x = 0), and y = p, p + 1 with either sign.
        assert_eq!(decoded, 14);
        for i in 0..64u8 {
            let r = SigningKey::from_bytes(&[i; 32]).verifying_key().to_bytes();
            assert!(!is_small_order_edwards_y(&r));
        }
    }

    #[test]
    fn the_two_lists_share_exactly_the_order_1_2_4_rows() {
        let shared: Vec<_> = LOW_ORDER_POINTS
            .iter()
            .filter(|u| SMALL_ORDER_Y.contains(u))
            .collect();
        assert_eq!(shared, [&ZERO, &ONE, &P_MINUS_1, &P, &P_PLUS_1]);
    }
}
