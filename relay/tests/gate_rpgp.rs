//! Real OpenPGP messages made with rPGP, wrapped the way Delta Chat sends them, through the
//! encryption gate; and the generator of the rPGP-made fixtures in `tests/fixtures/gate/`
//! (`cargo test -p relaybox --test gate_rpgp -- --ignored regenerate_fixtures`).

mod common;

use common::*;
use pgp::composed::{
    ArmorOptions, EncryptionCaps, KeyType, Message, MessageBuilder, SecretKeyParamsBuilder,
    SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::aead::{AeadAlgorithm, ChunkSize};
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::PublicSubkey;
use pgp::types::{CompressionAlgorithm, KeyVersion, Password, StringToKey};
use rand::rngs::StdRng;
use rand::SeedableRng;
use relaybox::policy::Direction;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.net";

/// A key like Delta Chat's: an Ed25519 primary that signs and one encryption subkey. `v6`
/// gives an RFC 9580 v6 key (Ed25519 + X25519), else a v4 key (EdDSA legacy + Curve25519 ECDH).
fn key(rng: &mut StdRng, uid: &str, v6: bool) -> SignedSecretKey {
    let (version, primary, sub) = if v6 {
        (KeyVersion::V6, KeyType::Ed25519, KeyType::X25519)
    } else {
        (
            KeyVersion::V4,
            KeyType::Ed25519Legacy,
            KeyType::ECDH(ECCCurve::Curve25519Legacy),
        )
    };
    let mut enc = SubkeyParamsBuilder::default();
    enc.version(version)
        .key_type(sub)
        .can_sign(false)
        .can_encrypt(EncryptionCaps::All)
        .can_authenticate(false);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .version(version)
        .key_type(primary)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(format!("<{uid}>"))
        .subkeys(vec![enc.build().unwrap()]);
    params.build().unwrap().generate(rng).unwrap()
}

fn enc_key(k: &SignedSecretKey) -> &PublicSubkey {
    k.secret_subkeys[0].key.public_key()
}

/// The text Delta Chat would put inside: a MIME part with the real headers.
fn inner(text: &str) -> Vec<u8> {
    crlf(&format!(
        "Content-Type: text/plain; charset=\"utf-8\"\nSubject: Hello\n\
         From: <{ALICE}>\nTo: <{BOB}>\nChat-Version: 1.0\n\n{text}\n"
    ))
    .into_bytes()
}

struct Made {
    /// The message as rPGP armors it (LF line ends, checksum).
    armored: String,
    /// The same message, binary.
    binary: Vec<u8>,
}

/// Signed by `from`, SEIPD v1 (AES-128) to every key in `to`, the way Delta Chat sends.
fn seipd_v1(rng: &mut StdRng, from: &SignedSecretKey, to: &[&SignedSecretKey], text: &str) -> Made {
    let build = |rng: &mut StdRng| {
        let mut b = MessageBuilder::from_bytes("", inner(text))
            .seipd_v1(&mut *rng, SymmetricKeyAlgorithm::AES128);
        b.sign(&from.primary_key, Password::empty(), HashAlgorithm::Sha256);
        for k in to {
            b.encrypt_to_key(&mut *rng, enc_key(k)).unwrap();
        }
        b
    };
    let armored = build(rng)
        .to_armored_string(&mut *rng, ArmorOptions::default())
        .unwrap();
    let binary = build(rng).to_vec(&mut *rng).unwrap();
    Made { armored, binary }
}

/// Signed by `from`, SEIPD v2 (AES-128, OCB) to `to`.
fn seipd_v2(rng: &mut StdRng, from: &SignedSecretKey, to: &SignedSecretKey, text: &str) -> Made {
    let build = |rng: &mut StdRng| {
        let mut b = MessageBuilder::from_bytes("", inner(text)).seipd_v2(
            &mut *rng,
            SymmetricKeyAlgorithm::AES128,
            AeadAlgorithm::Ocb,
            ChunkSize::default(),
        );
        b.sign(&from.primary_key, Password::empty(), HashAlgorithm::Sha256);
        b.encrypt_to_key(&mut *rng, enc_key(to)).unwrap();
        b
    };
    let armored = build(rng)
        .to_armored_string(&mut *rng, ArmorOptions::default())
        .unwrap();
    let binary = build(rng).to_vec(&mut *rng).unwrap();
    Made { armored, binary }
}

/// Not encrypted: a literal data packet, optionally signed (one-pass signature) or compressed.
fn unencrypted(rng: &mut StdRng, sign: Option<&SignedSecretKey>, compress: bool) -> Made {
    let build = || {
        let mut b = MessageBuilder::from_bytes("", inner("not encrypted at all"));
        if let Some(k) = sign {
            b.sign(&k.primary_key, Password::empty(), HashAlgorithm::Sha256);
        }
        if compress {
            b.compression(CompressionAlgorithm::ZLIB);
        }
        b
    };
    let armored = build()
        .to_armored_string(&mut *rng, ArmorOptions::default())
        .unwrap();
    let binary = build().to_vec(&mut *rng).unwrap();
    Made { armored, binary }
}

fn decrypts_to(armored: &str, key: &SignedSecretKey, want: &str) {
    let (msg, _) = Message::from_armor(std::io::BufReader::new(armored.as_bytes())).unwrap();
    let mut plain = msg.decrypt(&Password::empty(), key).unwrap();
    let data = plain.as_data_vec().unwrap();
    assert!(
        String::from_utf8_lossy(&data).contains(want),
        "{:?}",
        String::from_utf8_lossy(&data)
    );
}

fn assert_both(mail: &[u8], outgoing: &str, incoming: &str) {
    assert_eq!(check(mail, Direction::Outgoing), outgoing, "outgoing");
    assert_eq!(check(mail, Direction::Incoming), incoming, "incoming");
}

#[test]
fn seipd_v1_from_rpgp_passes_both_ways() {
    let mut rng = StdRng::seed_from_u64(1);
    let alice = key(&mut rng, ALICE, false);
    let bob = key(&mut rng, BOB, false);
    let m = seipd_v1(&mut rng, &alice, &[&bob, &alice], "hello bob");
    decrypts_to(&m.armored, &bob, "hello bob");
    assert_both(
        pgp_mime(ALICE, BOB, &m.armored).as_bytes(),
        "accept",
        "accept",
    );
    // Also armored by us (CRLF, 64 columns), with and without the checksum line.
    for crc in [true, false] {
        let a = armor(&m.binary, &[], crc);
        assert_both(pgp_mime(ALICE, BOB, &a).as_bytes(), "accept", "accept");
    }
}

#[test]
fn seipd_v2_from_rpgp_passes_both_ways() {
    let mut rng = StdRng::seed_from_u64(2);
    let alice = key(&mut rng, ALICE, true);
    let bob = key(&mut rng, BOB, true);
    let m = seipd_v2(&mut rng, &alice, &bob, "hello v6 bob");
    decrypts_to(&m.armored, &bob, "hello v6 bob");
    assert_both(
        pgp_mime(ALICE, BOB, &m.armored).as_bytes(),
        "accept",
        "accept",
    );
}

#[test]
fn password_encrypted_skesk_passes() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut b = MessageBuilder::from_bytes("", inner("symmetric"))
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES128);
    b.encrypt_with_password(StringToKey::new_default(&mut rng), &"secret".into())
        .unwrap();
    let armored = b
        .to_armored_string(&mut rng, ArmorOptions::default())
        .unwrap();
    assert_both(
        pgp_mime(ALICE, BOB, &armored).as_bytes(),
        "accept",
        "accept",
    );
}

#[test]
fn signed_only_and_compressed_messages_are_refused() {
    let mut rng = StdRng::seed_from_u64(4);
    let alice = key(&mut rng, ALICE, false);
    for (sign, compress) in [(None, false), (Some(&alice), false), (None, true)] {
        let m = unencrypted(&mut rng, sign, compress);
        let first = m.binary[0];
        match (sign.is_some(), compress) {
            // One-pass signature packet (tag 4), literal (11), compressed (8); new format.
            (true, _) => assert_eq!(first, 0xC4),
            (false, true) => assert_eq!(first, 0xC8),
            (false, false) => assert_eq!(first, 0xCB),
        }
        assert_both(pgp_mime(ALICE, BOB, &m.armored).as_bytes(), "523", "523");
        assert_both(
            pgp_mime(ALICE, BOB, &armor(&m.binary, &[], true)).as_bytes(),
            "523",
            "523",
        );
    }
}

// ----- the fixture generator -----

/// Splits a binary message into its packets (header and body bytes together). Handles the
/// header forms rPGP writes: new format with fixed or partial lengths.
fn packets(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut p = 1;
        loop {
            let b0 = data[p] as usize;
            match b0 {
                0..=191 => {
                    p += 1 + b0;
                    break;
                }
                192..=223 => {
                    p += 2 + ((b0 - 192) << 8) + data[p + 1] as usize + 192;
                    break;
                }
                255 => {
                    let l = u32::from_be_bytes(data[p + 1..p + 5].try_into().unwrap());
                    p += 5 + l as usize;
                    break;
                }
                _ => p += 1 + (1usize << (b0 & 0x1f)),
            }
        }
        out.push(data[..p].to_vec());
        data = &data[p..];
    }
    out
}

/// A packet's body, for a packet with a fixed-length new-format header.
fn fixed_body(packet: &[u8]) -> &[u8] {
    match packet[1] {
        0..=191 => &packet[2..],
        192..=223 => &packet[3..],
        255 => &packet[6..],
        b => panic!("not a fixed length: {b}"),
    }
}

fn new_packet(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xC0 | tag, 255];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A PKESK re-encoded with a GnuPG-style legacy header (`0x84`/`0x85`).
fn legacy_pkesk(packet: &[u8]) -> Vec<u8> {
    let body = fixed_body(packet);
    let mut v = if body.len() < 256 {
        vec![0x80 | (1 << 2), body.len() as u8]
    } else {
        let mut v = vec![0x80 | (1 << 2) | 1];
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v
    };
    v.extend_from_slice(body);
    v
}

/// The whole set of generated fixtures: (file name, bytes).
fn generated() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(0x6a7e);
    let alice = key(&mut rng, ALICE, false);
    let bob = key(&mut rng, BOB, false);
    let carol = key(&mut rng, "carol@example.com", false);
    let alice6 = key(&mut rng, ALICE, true);
    let bob6 = key(&mut rng, BOB, true);
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut add = |name: &'static str, s: String| out.push((name, s.into_bytes()));
    let mime = |armored: &str| pgp_mime(ALICE, BOB, armored);

    // One PKESK, as when Delta Chat sends to one contact; text long enough that the base64
    // needs padding, so a missing CRC line leaves a `=` at the end (see missing-crc.eml).
    let mut text = String::from("hello bob");
    let m = loop {
        let m = seipd_v1(&mut rng, &alice, &[&bob], &text);
        if !m.binary.len().is_multiple_of(3) {
            break m;
        }
        text.push('!');
    };
    let pk = packets(&m.binary);
    assert_eq!(pk.len(), 2, "PKESK + SEIPD");
    assert_eq!((pk[0][0], pk[1][0]), (0xC1, 0xD2));
    let (pkesk, seipd) = (pk[0].clone(), pk[1].clone());
    add("encrypted.eml", mime(&m.armored));
    add(
        "encrypted-seipd-v2.eml",
        mime(&seipd_v2(&mut rng, &alice6, &bob6, "hello v6").armored),
    );
    add(
        "multi-pkesk.eml",
        mime(&seipd_v1(&mut rng, &alice, &[&bob, &carol, &alice], "to three").armored),
    );
    {
        let mut b = MessageBuilder::from_bytes("", inner("symmetric"))
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES128);
        b.encrypt_with_password(StringToKey::new_default(&mut rng), &"secret".into())
            .unwrap();
        b.encrypt_to_key(&mut rng, enc_key(&bob)).unwrap();
        let a = b
            .to_armored_string(&mut rng, ArmorOptions::default())
            .unwrap();
        add("skesk-seipd.eml", mime(&a));
    }
    {
        // rPGP streams large bodies with partial lengths of 512 bytes.
        let mut b = MessageBuilder::from_bytes("", inner(&"long line of text\n".repeat(300)))
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES128);
        b.partial_chunk_size(512).unwrap();
        b.encrypt_to_key(&mut rng, enc_key(&bob)).unwrap();
        let bin = b.to_vec(&mut rng).unwrap();
        let last = packets(&bin).pop().unwrap();
        assert!((224..255).contains(&last[1]), "partial length: {}", last[1]);
        add("partial-lengths.eml", mime(&armor(&bin, &[], true)));
    }
    add(
        "literal.eml",
        mime(&unencrypted(&mut rng, None, false).armored),
    );
    add(
        "signed-only.eml",
        mime(&unencrypted(&mut rng, Some(&alice), false).armored),
    );
    let compressed = unencrypted(&mut rng, None, true);
    add("compressed.eml", mime(&compressed.armored));
    let literal = unencrypted(&mut rng, None, false).binary;

    // Armor variants of the same packets.
    let with_version = seipd_v1(&mut rng, &alice, &[&bob], "x");
    let bin = with_version.binary;
    add(
        "armor-version.eml",
        mime(&armor(&bin, &[("Version", "rPGP 0.21")], true)),
    );
    add(
        "armor-comment.eml",
        mime(&armor(&bin, &[("Comment", "hi")], true)),
    );
    add("missing-crc.eml", mime(&armor(&m.binary, &[], false)));
    {
        let good = armor(&m.binary, &[], true);
        let crc_at = good.rfind("\r\n=").unwrap() + 3;
        let mut bad = good.clone();
        bad.replace_range(crc_at..crc_at + 4, "AAAA");
        assert_ne!(bad, good);
        add("bad-crc.eml", mime(&bad));
    }
    {
        let good = armor(&m.binary, &[], true);
        let at = good.find("\r\n\r\n").unwrap() + 4 + 20;
        let mut bad = good.clone();
        bad.replace_range(at..at + 1, "*");
        add("broken-base64.eml", mime(&bad));
    }
    {
        // The BEGIN line with CRLF, but the base64 lines end in bare LF.
        let a = armor(&m.binary, &[], true);
        let (begin, rest) = a.split_once("\r\n").unwrap();
        let body = format!("{begin}\r\n{}", rest.replace("\r\n", "\n"));
        let mail = mime("@@ARMOR@@").replace("@@ARMOR@@", body.trim_end());
        add("armor-lf-body.eml", mail);
    }
    add("lf-only.eml", mime(&m.armored).replace("\r\n", "\n"));
    {
        // The whole armor in a base64 Content-Transfer-Encoding.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(crlf(&m.armored));
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let mail = mime("@@ARMOR@@")
            .replace(
                "filename=\"encrypted.asc\";\r\n",
                "filename=\"encrypted.asc\";\r\nContent-Transfer-Encoding: base64\r\n",
            )
            .replace("@@ARMOR@@", &wrapped.join("\r\n"));
        add("base64-transfer-encoding.eml", mail);
    }

    // Packet-level variants, armored by us.
    let arm = |bin: &[u8]| mime(&armor(bin, &[], true));
    add(
        "legacy-pkesk.eml",
        arm(&[legacy_pkesk(&pkesk), seipd.clone()].concat()),
    );
    {
        let mut v = vec![0x80 | (1 << 2) | 3];
        v.extend_from_slice(fixed_body(&pkesk));
        v.extend_from_slice(&seipd);
        add("legacy-indeterminate.eml", arm(&v));
    }
    let both = [pkesk.clone(), seipd.clone()].concat();
    add("truncated.eml", arm(&both[..both.len() - 7]));
    add(
        "trailing-packet.eml",
        arm(&[both.clone(), new_packet(21, &[0u8; 16])].concat()),
    );
    add(
        "compressed-after-seipd.eml",
        arm(&[both.clone(), compressed.binary].concat()),
    );
    add(
        "literal-after-seipd.eml",
        arm(&[both.clone(), literal.clone()].concat()),
    );
    {
        let mut v = both.clone();
        let at = pkesk.len();
        assert_eq!(v[at], 0xD2);
        v[at] = 0xC0 | 20;
        add("aead-tag20.eml", arm(&v));
    }
    add("seipd-only.eml", arm(&seipd));
    add("pkesk-only.eml", arm(&pkesk));
    {
        // SEIPD whose body is sent as 1-byte partial chunks (RFC 9580 wants the first chunk to
        // be at least 512 bytes; the rule does not check that), then a fixed final length.
        let body = fixed_body(&seipd);
        let mut v = pkesk.clone();
        v.push(0xD2);
        let (head, tail) = body.split_at(40);
        for b in head {
            v.push(224);
            v.push(*b);
        }
        v.push(255);
        v.extend_from_slice(&(tail.len() as u32).to_be_bytes());
        v.extend_from_slice(tail);
        add("partial-tiny-chunks.eml", arm(&v));
    }
    {
        // A chain of partial lengths announcing 2^30 bytes each.
        let mut v = pkesk.clone();
        v.push(0xD2);
        for _ in 0..8 {
            v.push(254);
            v.extend_from_slice(&[0u8; 32]);
        }
        add("huge-partial-chain.eml", arm(&v));
    }

    // MIME structure variants around a good armor.
    let good = mime(&m.armored);
    add(
        "uppercase-content-types.eml",
        good.replace("multipart/encrypted", "MULTIPART/ENCRYPTED")
            .replace(
                "application/pgp-encrypted\r\n",
                "APPLICATION/PGP-ENCRYPTED\r\n",
            )
            .replace("application/octet-stream", "Application/Octet-Stream"),
    );
    add(
        "version-2.eml",
        good.replace("\r\nVersion: 1\r\n", "\r\nVersion: 2\r\n"),
    );
    add(
        "part2-text-plain.eml",
        good.replace("application/octet-stream; name", "text/plain; name"),
    );
    let b = BOUNDARY;
    let end = format!("--{b}--\r\n");
    add(
        "three-parts.eml",
        good.replace(
            &end,
            &format!("--{b}\r\nContent-Type: text/plain\r\n\r\nhello in clear\r\n{end}"),
        ),
    );
    {
        // Only the version part: filtermail's loop would let this through; the rule says two.
        let start = good
            .find(&format!("--{b}\r\nContent-Type: application/octet"))
            .unwrap();
        add("one-part.eml", format!("{}{end}", &good[..start]));
    }
    {
        // The encrypted structure one level down, inside multipart/mixed.
        let (head, body) = good.split_once("\r\n\r\n").unwrap();
        let outer = "mIx3dOuterB0undary9q8w7e6r5t4y3u2i";
        let head = head.replace(
            "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n\tboundary",
            &format!("Content-Type: multipart/mixed; boundary=\"{outer}\"\r\nX-Inner: boundary"),
        );
        let inner_ct = format!(
            "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n\tboundary=\"{b}\"\r\n"
        );
        add(
            "nested-multipart.eml",
            format!("{head}\r\n\r\n--{outer}\r\n{inner_ct}\r\n{body}\r\n--{outer}--\r\n"),
        );
    }
    {
        // Part 2 is itself multipart (holding the octet-stream).
        let inner_b = "n3st3dPartTwoB0undaryZx8Cv7Bn6Mm5";
        let mail = good.replace(
            "Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n",
            &format!(
                "Content-Type: multipart/mixed; boundary=\"{inner_b}\"\r\n\r\n--{inner_b}\r\n\
                 Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"
            ),
        );
        let mail = mail.replace(&end, &format!("\r\n--{inner_b}--\r\n{end}"));
        add("part2-multipart.eml", mail);
    }
    out
}

#[test]
fn generated_fixtures_are_committed() {
    // The committed files are one run of the generator; each generated name must exist.
    for (name, _) in generated() {
        assert!(
            fixtures_dir().join(name).exists(),
            "{name} missing: run the ignored regenerate_fixtures test"
        );
    }
}

#[test]
#[ignore = "rewrites tests/fixtures/gate/; run by hand"]
fn regenerate_fixtures() {
    let dir = fixtures_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in generated() {
        std::fs::write(dir.join(name), data).unwrap();
        println!("wrote {name}");
    }
}
