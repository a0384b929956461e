//! The `.update` bundle: header, manifest, Ed25519 signature, then the boot and root images.
//!
//! ```text
//! "RBXUPD01" | mlen u32 LE | manifest (mlen bytes JSON) | sig (64) | boot image | root image
//! ```
//! The signature covers `b"relaybox-update-v1\0" || manifest`; the manifest carries the size and
//! SHA-256 of both images. Checking reads the header, then the payload once with a fixed
//! buffer, so memory stays bounded whatever the bundle's size.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"RBXUPD01";
pub const SIG_CONTEXT: &[u8] = b"relaybox-update-v1\0";
pub const SIG_LEN: usize = 64;
/// A manifest is a few hundred bytes; anything much larger is not one.
pub const MANIFEST_MAX: u32 = 64 << 10;
/// The read buffer of the hash and copy passes.
pub const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub version: String,
    pub build_id: String,
    pub arch: String,
    pub board: String,
    pub created: String,
    pub boot: Payload,
    pub root: Payload,
}

/// Why a bundle is refused. Every message is one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read the bundle: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a relaybox update bundle (bad magic)")]
    BadMagic,
    #[error("the bundle is truncated ({0})")]
    Truncated(&'static str),
    #[error("the bundle's manifest is {0} bytes, more than any manifest")]
    ManifestTooLarge(u32),
    #[error("the bundle is not signed by this image's release key")]
    BadSignature,
    #[error("the bundle's manifest is not valid JSON: {0}")]
    ManifestNotJson(String),
    #[error("unsupported bundle format {0} (this relaybox reads format 1)")]
    Format(u32),
    #[error("the bundle is for {found}, this system is {expected}")]
    Arch { found: String, expected: String },
    #[error("version {version} is already installed (use --allow-downgrade to install it again)")]
    AlreadyInstalled { version: String },
    #[error("version {version} is older than the running {running} (use --allow-downgrade)")]
    Older { version: String, running: String },
    #[error("the {what} image is {size} bytes, more than its partition takes ({max} bytes)")]
    TooLarge {
        what: &'static str,
        size: u64,
        max: u64,
    },
    #[error("the bundle has {0} bytes after the root image")]
    Trailing(u64),
    #[error("the {0} image does not match the manifest's SHA-256 (corrupted or tampered)")]
    HashMismatch(&'static str),
}

/// What the running system accepts.
pub struct Expect<'a> {
    pub pubkey: &'a [u8; 32],
    pub arch: &'a str,
    pub board: &'a str,
    pub running_version: &'a str,
    pub allow_downgrade: bool,
    pub boot_max: u64,
    pub root_max: u64,
}

/// A bundle whose header and signature are checked; the payload starts at `payload_offset`.
#[derive(Debug, Clone)]
pub struct Header {
    pub manifest: Manifest,
    pub payload_offset: u64,
}

impl Header {
    /// The exact length of the whole bundle.
    pub fn total_len(&self) -> u64 {
        self.payload_offset
            .saturating_add(self.manifest.boot.size)
            .saturating_add(self.manifest.root.size)
    }
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::Truncated(what),
        _ => BundleError::Io(e),
    })
}

/// Reads the header and checks it: magic, signature, manifest, against `expect`. Nothing of
/// the payload is read.
pub fn read_header(r: &mut impl Read, expect: &Expect) -> Result<Header, BundleError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::BadMagic,
        _ => BundleError::Io(e),
    })?;
    if &magic != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let mut len = [0u8; 4];
    read_exact_or(r, &mut len, "in the header")?;
    let mlen = u32::from_le_bytes(len);
    if mlen > MANIFEST_MAX {
        return Err(BundleError::ManifestTooLarge(mlen));
    }
    let mut manifest = vec![0u8; mlen as usize];
    read_exact_or(r, &mut manifest, "in the manifest")?;
    let mut sig = [0u8; SIG_LEN];
    read_exact_or(r, &mut sig, "in the signature")?;
    // The signature first: nothing of an unsigned manifest is worth parsing or reporting.
    let mut signed = Vec::with_capacity(SIG_CONTEXT.len() + manifest.len());
    signed.extend_from_slice(SIG_CONTEXT);
    signed.extend_from_slice(&manifest);
    UnparsedPublicKey::new(&ED25519, expect.pubkey)
        .verify(&signed, &sig)
        .map_err(|_| BundleError::BadSignature)?;
    let m: Manifest = serde_json::from_slice(&manifest)
        .map_err(|e| BundleError::ManifestNotJson(e.to_string()))?;
    check_manifest(&m, expect)?;
    Ok(Header {
        manifest: m,
        payload_offset: 8 + 4 + u64::from(mlen) + SIG_LEN as u64,
    })
}

pub fn check_manifest(m: &Manifest, expect: &Expect) -> Result<(), BundleError> {
    if m.format != 1 {
        return Err(BundleError::Format(m.format));
    }
    if m.arch != expect.arch || m.board != expect.board {
        return Err(BundleError::Arch {
            found: format!("{}/{}", m.arch, m.board),
            expected: format!("{}/{}", expect.arch, expect.board),
        });
    }
    if !expect.allow_downgrade {
        match super::compare_versions(&m.version, expect.running_version) {
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => {
                return Err(BundleError::AlreadyInstalled {
                    version: m.version.clone(),
                })
            }
            std::cmp::Ordering::Less => {
                return Err(BundleError::Older {
                    version: m.version.clone(),
                    running: expect.running_version.to_string(),
                })
            }
        }
    }
    for (what, p, max) in [
        ("boot", &m.boot, expect.boot_max),
        ("root", &m.root, expect.root_max),
    ] {
        if p.size > max {
            return Err(BundleError::TooLarge {
                what,
                size: p.size,
                max,
            });
        }
    }
    Ok(())
}

/// Copies exactly `len` bytes from `r` to `w` (when given), hashing them; `tick` gets the
/// bytes done so far after each chunk and may stop the copy with an error.
pub fn copy_hashed(
    r: &mut impl Read,
    mut w: Option<&mut dyn Write>,
    len: u64,
    what: &'static str,
    tick: &mut dyn FnMut(u64) -> std::io::Result<()>,
) -> Result<String, BundleError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK)).max(1)];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => return Err(BundleError::Truncated(what)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        ctx.update(&buf[..n]);
        if let Some(w) = w.as_deref_mut() {
            w.write_all(&buf[..n])?;
        }
        done += n as u64;
        tick(done)?;
    }
    Ok(super::to_hex(ctx.finish().as_ref()))
}

/// Fails with [`BundleError::Trailing`] if `r` has anything left.
pub fn expect_eof(r: &mut impl Read) -> Result<(), BundleError> {
    let mut rest = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => rest += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        // A count is enough for the message; don't read gigabytes of junk to the end.
        if rest >= 1 << 20 {
            break;
        }
    }
    if rest > 0 {
        return Err(BundleError::Trailing(rest));
    }
    Ok(())
}

/// Progress of a long step: (step name, bytes done, bytes total).
pub type Tick<'a> = &'a mut dyn FnMut(&str, u64, u64) -> std::io::Result<()>;

/// Checks a whole bundle file: header, exact length, both hashes (one read pass).
pub fn verify_file(path: &Path, expect: &Expect, tick: Tick) -> Result<Header, BundleError> {
    let mut f = std::fs::File::open(path)?;
    let header = read_header(&mut std::io::BufReader::new(&mut f), expect)?;
    // The length first, so a truncated or padded file is refused before a long hash pass.
    let len = f.metadata()?.len();
    let want = header.total_len();
    if len < want {
        return Err(BundleError::Truncated(
            "the images are shorter than the manifest says",
        ));
    }
    if len > want {
        return Err(BundleError::Trailing(len - want));
    }
    f.seek(std::io::SeekFrom::Start(header.payload_offset))?;
    verify_payload(&mut f, &header.manifest, tick)?;
    Ok(header)
}

/// The hash pass over the payload, positioned at its start.
pub fn verify_payload(r: &mut impl Read, m: &Manifest, tick: Tick) -> Result<(), BundleError> {
    for (what, p) in [("boot", &m.boot), ("root", &m.root)] {
        let total = p.size;
        let step = format!("verifying {what}");
        let got = copy_hashed(r, None, p.size, what, &mut |d| tick(&step, d, total))?;
        if !got.eq_ignore_ascii_case(&p.sha256) {
            return Err(BundleError::HashMismatch(what));
        }
    }
    expect_eof(r)
}

/// What `relaybox update-bundle create` needs besides the two images.
pub struct CreateOpts<'a> {
    pub version: &'a str,
    pub build_id: &'a str,
    pub arch: &'a str,
    pub board: &'a str,
    pub created: i64,
}

/// Loads an Ed25519 PKCS#8 key (ring's v2 and OpenSSL's v1 both).
pub fn load_key(pkcs8: &[u8]) -> Result<Ed25519KeyPair, String> {
    Ed25519KeyPair::from_pkcs8(pkcs8)
        .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8))
        .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
}

pub fn public_key_hex(key: &Ed25519KeyPair) -> String {
    super::to_hex(key.public_key().as_ref())
}

/// The signed header of a bundle for the given manifest.
pub fn encode_header(m: &Manifest, key: &Ed25519KeyPair) -> Vec<u8> {
    let manifest = serde_json::to_vec(m).expect("a manifest always serializes");
    let mut signed = SIG_CONTEXT.to_vec();
    signed.extend_from_slice(&manifest);
    let sig = key.sign(&signed);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(&manifest);
    out.extend_from_slice(sig.as_ref());
    out
}

/// Writes a signed bundle of `boot` and `root` to `out` (hash pass, then copy pass; both
/// streamed). Returns the manifest.
pub fn create(
    boot: &Path,
    root: &Path,
    opts: &CreateOpts,
    key: &Ed25519KeyPair,
    out: &Path,
) -> Result<Manifest, BundleError> {
    let payload = |p: &Path, what: &'static str| -> Result<Payload, BundleError> {
        let mut f = std::fs::File::open(p)?;
        let size = f.metadata()?.len();
        let sha256 = copy_hashed(&mut f, None, size, what, &mut |_| Ok(()))?;
        Ok(Payload { size, sha256 })
    };
    let m = Manifest {
        format: 1,
        version: opts.version.to_string(),
        build_id: opts.build_id.to_string(),
        arch: opts.arch.to_string(),
        board: opts.board.to_string(),
        created: super::rfc3339(opts.created),
        boot: payload(boot, "boot")?,
        root: payload(root, "root")?,
    };
    let tmp = out.with_extension("update.part");
    let mut w = std::io::BufWriter::with_capacity(CHUNK, std::fs::File::create(&tmp)?);
    w.write_all(&encode_header(&m, key))?;
    for (p, want, what) in [(boot, &m.boot, "boot"), (root, &m.root, "root")] {
        let mut f = std::fs::File::open(p)?;
        let got = copy_hashed(&mut f, Some(&mut w), want.size, what, &mut |_| Ok(()))?;
        if got != want.sha256 {
            // The image changed between the two passes: the build is still writing it.
            return Err(BundleError::HashMismatch(what));
        }
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(m)
}
