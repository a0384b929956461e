//! One real OpenPGP message per size, made with rPGP the way Delta Chat sends (Ed25519 +
//! Curve25519 v4 keys, signed, SEIPD v1 AES-128), wrapped as PGP/MIME.

use anyhow::{anyhow, Result};
use pgp::composed::{
    ArmorOptions, EncryptionCaps, KeyType, MessageBuilder, SecretKeyParamsBuilder, SignedSecretKey,
    SubkeyParamsBuilder,
};
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{KeyVersion, Password};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn key(rng: &mut StdRng, uid: &str) -> Result<SignedSecretKey> {
    let mut enc = SubkeyParamsBuilder::default();
    enc.version(KeyVersion::V4)
        .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
        .can_sign(false)
        .can_encrypt(EncryptionCaps::All)
        .can_authenticate(false);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .version(KeyVersion::V4)
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(format!("<{uid}>"))
        .subkeys(vec![enc.build().map_err(|e| anyhow!("{e}"))?]);
    Ok(params.build().map_err(|e| anyhow!("{e}"))?.generate(rng)?)
}

/// The armored (CRLF) PGP message whose plaintext is `size` bytes of MIME text.
pub fn make(size: usize) -> Result<String> {
    let mut rng = StdRng::seed_from_u64(size as u64);
    let alice = key(&mut rng, "alice@loadgen.invalid")?;
    let bob = key(&mut rng, "bob@loadgen.invalid")?;
    let mut text =
        String::from("Content-Type: text/plain; charset=\"utf-8\"\r\nChat-Version: 1.0\r\n\r\n");
    let line = "The quick brown fox jumps over the lazy dog 0123456789 benchmark text.\r\n";
    while text.len() < size {
        text.push_str(line);
    }
    text.truncate(size);
    let mut b = MessageBuilder::from_bytes("", text.into_bytes())
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES128);
    b.sign(&alice.primary_key, Password::empty(), HashAlgorithm::Sha256);
    for k in [&bob, &alice] {
        b.encrypt_to_key(&mut rng, k.secret_subkeys[0].key.public_key())?;
    }
    let armored = b.to_armored_string(&mut rng, ArmorOptions::default())?;
    Ok(armored.replace("\r\n", "\n").replace('\n', "\r\n"))
}

/// The whole message (headers + PGP/MIME body), CRLF, ready for DATA (armor lines never start
/// with a dot, so no dot-stuffing is needed).
pub fn wrap(armored: &str, from: &str, to: &str, id: &str) -> Vec<u8> {
    let b = "loadgen-boundary-5f1e";
    format!(
        "Subject: [...]\r\n\
         Chat-Version: 1.0\r\n\
         Message-ID: <{id}.{}@loadgen.invalid>\r\n\
         Date: Mon, 03 Nov 2025 10:00:00 +0000\r\n\
         To: <{to}>\r\n\
         From: <{from}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n\
         \tboundary=\"{b}\"\r\n\
         \r\n\
         \r\n\
         --{b}\r\n\
         Content-Type: application/pgp-encrypted\r\n\
         Content-Description: PGP/MIME version identification\r\n\
         \r\n\
         Version: 1\r\n\
         \r\n\
         --{b}\r\n\
         Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
         Content-Description: OpenPGP encrypted message\r\n\
         Content-Disposition: inline; filename=\"encrypted.asc\";\r\n\
         \r\n\
         {armored}\r\n\
         --{b}--\r\n",
        std::process::id()
    )
    .into_bytes()
}
