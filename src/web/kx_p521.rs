//! The P-521 (secp521r1) key exchange group for rustls, which neither of
//! its bundled providers (`ring`, `aws-lc-rs`) offers; Go's `CurveP521` in
//! a web configuration's `curve_preferences` needs it. The arithmetic is
//! RustCrypto's `p521` crate; this is only the glue to rustls' traits.

use p521::elliptic_curve::sec1::ToEncodedPoint;
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};

/// secp521r1 ECDHE, for TLS 1.2 and 1.3.
pub static SECP521R1: &dyn SupportedKxGroup = &Secp521r1;

#[derive(Debug)]
struct Secp521r1;

impl SupportedKxGroup for Secp521r1 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let secret = p521::ecdh::EphemeralSecret::random(&mut rand_core::OsRng);
        // Uncompressed SEC1 point, as TLS sends it.
        let public = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Ok(Box::new(Active { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

struct Active {
    secret: p521::ecdh::EphemeralSecret,
    public: Vec<u8>,
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        // Only uncompressed points are allowed in TLS (RFC 8446 4.2.8.2).
        if peer_pub_key.first() != Some(&0x04) {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let peer = p521::PublicKey::from_sec1_bytes(peer_pub_key)
            .map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self.secret.diffie_hellman(&peer);
        Ok(SharedSecret::from(shared.raw_secret_bytes().as_slice()))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_secret() {
        let a = SECP521R1.start().unwrap();
        let b = SECP521R1.start().unwrap();
        assert_eq!(a.pub_key().len(), 133);
        let b_pub = b.pub_key().to_vec();
        let a_pub = a.pub_key().to_vec();
        let s1 = a.complete(&b_pub).unwrap();
        let s2 = b.complete(&a_pub).unwrap();
        assert_eq!(s1.secret_bytes(), s2.secret_bytes());
        assert_eq!(s1.secret_bytes().len(), 66);
    }

    #[test]
    fn a_bad_key_share_is_refused() {
        let a = SECP521R1.start().unwrap();
        assert!(a.complete(&[4u8; 133]).is_err());
        let a = SECP521R1.start().unwrap();
        assert!(a.complete(&[]).is_err());
    }
}
