//! The PKCS#11 backend: every key generated in the token, sensitive and non-extractable.
//! SoftHSM in tests; an HSM or tpm2-pkcs11 in the field. One logged-in session per core.
//! Besides the four keys, the token holds the audit log's HMAC key (`{prefix}-audit`, the
//! log's MAC key is an HMAC by it, made at start) and a data object with the sequence
//! guard's ceiling (`{prefix}-sequence`), which survives a wiped state directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use serde::Deserialize;
use stream::keys::{BoxPublicKey, Secret32};
use stream::package::SignerTable;
use zeroize::Zeroizing;

use super::{Backend, BackendError, BackendInfo};
use crate::harden::Locked;

const SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const X25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x6e];

/// `[pkcs11]` in keyd's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module.
    #[serde(default = "default_module")]
    pub module: PathBuf,
    /// The token, found by label (slot ids change when tokens are initialized).
    pub token_label: String,
    /// A file holding the user PIN (readable by keyd's user only).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// Object labels are `{prefix}-identity`, `-chain`, `-box`, `-field`.
    #[serde(default = "default_prefix")]
    pub label_prefix: String,
    /// Logged-in sessions (default: one per core).
    #[serde(default)]
    pub sessions: Option<usize>,
}

fn default_module() -> PathBuf {
    PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
}
fn default_prefix() -> String {
    "keyd".into()
}

fn failed(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::failed("pkcs11", what, e)
}

/// What the token's HMAC of this label gives: the audit log's MAC key.
const AUDIT_LABEL: &[u8] = b"keyd audit log v1";

fn read_pin(config: &Pkcs11Config) -> Result<AuthPin, BackendError> {
    let pin = match (&config.pin_file, &config.pin_env) {
        (Some(path), None) => {
            crate::files::check_private(path)
                .map_err(|e| BackendError::setup("pkcs11", format!("pin_file: {e}")))?;
            Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| failed(&format!("pin_file {}", path.display()), e))?,
            )
        }
        (None, Some(var)) => Zeroizing::new(
            std::env::var(var).map_err(|_| failed("pin_env", format!("{var} is not set")))?,
        ),
        _ => {
            return Err(failed(
                "configuration",
                "set exactly one of pin_file and pin_env",
            ))
        }
    };
    Ok(AuthPin::from(pin.trim().to_string()))
}

fn open(config: &Pkcs11Config) -> Result<(Pkcs11, Slot), BackendError> {
    let pkcs11 = load(&config.module)?;
    let slot = token_slot(&pkcs11, &config.token_label)?;
    Ok((pkcs11, slot))
}

/// Loads and initializes the module.
fn load(module: &std::path::Path) -> Result<Pkcs11, BackendError> {
    let pkcs11 =
        Pkcs11::new(module).map_err(|e| failed(&format!("module {}", module.display()), e))?;
    // OS locking: without it two threads corrupt SoftHSM's heap.
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| failed("initialize", e))?;
    Ok(pkcs11)
}

/// The slot holding the token labelled `label` (slot ids change when tokens are initialized).
fn token_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot, BackendError> {
    pkcs11
        .get_slots_with_token()
        .map_err(|e| failed("slots", e))?
        .into_iter()
        .find(|slot| {
            pkcs11
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim_end() == label)
        })
        .ok_or_else(|| failed("token", format!("no token labelled {label:?}")))
}

/// Initializes a fresh token labelled `label` in the module's first slot without one, with
/// a random SO PIN (used once, never kept) and `user_pin` as the user's PIN: what `keyd dev
/// up` does for SoftHSM, so no PIN appears on a command line.
pub fn init_development_token(
    module: &std::path::Path,
    label: &str,
    user_pin: &AuthPin,
) -> Result<(), BackendError> {
    let pkcs11 = load(module)?;
    let free = pkcs11
        .get_all_slots()
        .map_err(|e| failed("slots", e))?
        .into_iter()
        .find(|slot| {
            pkcs11
                .get_token_info(*slot)
                .is_ok_and(|info| !info.token_initialized())
        })
        .ok_or_else(|| {
            failed(
                "token",
                "the module has no slot with an uninitialized token",
            )
        })?;
    let so_pin = Secret32::random().map_err(|e| failed("SO PIN", e))?;
    let so_pin = AuthPin::from(hex::encode(so_pin.expose()));
    pkcs11
        .init_token(free, &so_pin, label)
        .map_err(|e| failed("init token", e))?;
    // SoftHSM moves an initialized token to a new slot id: find it again by its label.
    let slot = token_slot(&pkcs11, label)?;
    let session = pkcs11
        .open_rw_session(slot)
        .map_err(|e| failed("session", e))?;
    session
        .login(UserType::So, Some(&so_pin))
        .map_err(|e| failed("SO login", e))?;
    session
        .init_pin(user_pin)
        .map_err(|e| failed("init user PIN", e))?;
    Ok(())
}

fn login(session: &Session, pin: &AuthPin) -> Result<(), BackendError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(failed("login", e)),
    }
}

fn label(config: &Pkcs11Config, role: &str) -> Vec<u8> {
    format!("{}-{role}", config.label_prefix).into_bytes()
}

fn find(
    session: &Session,
    config: &Pkcs11Config,
    role: &str,
    class: ObjectClass,
) -> Result<ObjectHandle, BackendError> {
    let found = session
        .find_objects(&[
            Attribute::Label(label(config, role)),
            Attribute::Class(class),
        ])
        .map_err(|e| failed("find objects", e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(failed(
            "keys",
            format!("no {role} key in the token (run keyd init)"),
        )),
        _ => Err(failed(
            "keys",
            format!("more than one {role} key in the token"),
        )),
    }
}

/// The point in CKA_EC_POINT: DER OCTET STRING or raw, as tokens differ.
fn ec_point(session: &Session, key: ObjectHandle, len: usize) -> Result<Vec<u8>, BackendError> {
    let attributes = session
        .get_attributes(key, &[AttributeType::EcPoint])
        .map_err(|e| failed("public key", e))?;
    let Some(Attribute::EcPoint(point)) = attributes.into_iter().next() else {
        return Err(failed("public key", "no CKA_EC_POINT"));
    };
    if point.len() == len {
        return Ok(point);
    }
    if point.len() == len + 2 && point[0] == 0x04 && point[1] as usize == len {
        return Ok(point[2..].to_vec());
    }
    Err(failed(
        "public key",
        format!("unexpected CKA_EC_POINT of {} bytes", point.len()),
    ))
}

/// Generates the four keys in the token. Refuses when keys with these labels exist,
/// unless `force` (then they are destroyed first).
pub fn generate(config: &Pkcs11Config, force: bool) -> Result<(), BackendError> {
    let (pkcs11, slot) = open(config)?;
    let session = pkcs11
        .open_rw_session(slot)
        .map_err(|e| failed("session", e))?;
    login(&session, &read_pin(config)?)?;
    let existing = |role: &str| {
        session
            .find_objects(&[Attribute::Label(label(config, role))])
            .map_err(|e| failed("find objects", e))
    };
    let keys_exist = existing("identity")?.len() + existing("chain")?.len() > 0;
    if keys_exist && !force {
        // Keys made by an earlier keyd: add what it did not make, replace nothing.
        if existing("audit")?.is_empty()
            && ["identity", "chain", "box", "field"]
                .iter()
                .all(|r| existing(r).is_ok_and(|o| !o.is_empty()))
        {
            generate_audit_key(&session, config)?;
            return Ok(());
        }
        return Err(BackendError::setup(
            "pkcs11",
            "the token already holds keyd's keys; keyd init never replaces keys without --force",
        ));
    }
    for role in ["identity", "chain", "box", "field", "audit", "sequence"] {
        for object in existing(role)? {
            session
                .destroy_object(object)
                .map_err(|e| failed("destroy", e))?;
        }
    }
    let private = |role: &str, usage: Attribute| {
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(label(config, role)),
            usage,
        ]
    };
    let public = |role: &str, params: &[u8]| {
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::EcParams(params.to_vec()),
            Attribute::Label(label(config, role)),
        ]
    };
    session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &public("identity", SECP256K1),
            &private("identity", Attribute::Sign(true)),
        )
        .map_err(|e| failed("generate secp256k1 identity key", e))?;
    session
        .generate_key_pair(
            &Mechanism::EccEdwardsKeyPairGen,
            &public("chain", ED25519),
            &private("chain", Attribute::Sign(true)),
        )
        .map_err(|e| failed("generate Ed25519 chain key", e))?;
    // X25519: the standard Montgomery mechanism where the token has it, else SoftHSM's
    // route (an Edwards-mechanism key pair on curve25519, used with ECDH1).
    let box_pair = session
        .generate_key_pair(
            &Mechanism::EccMontgomeryKeyPairGen,
            &public("box", X25519),
            &private("box", Attribute::Derive(true)),
        )
        .or_else(|_| {
            session.generate_key_pair(
                &Mechanism::EccEdwardsKeyPairGen,
                &public("box", X25519),
                &private("box", Attribute::Derive(true)),
            )
        });
    box_pair.map_err(|e| failed("generate X25519 box key", e))?;
    let mut field = private("field", Attribute::Encrypt(true));
    field.extend([
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
    ]);
    session
        .generate_key(&Mechanism::AesKeyGen, &field)
        .map_err(|e| failed("generate AES-256 field key", e))?;
    generate_audit_key(&session, config)
}

/// The audit log's HMAC key: a generic secret that never leaves the token.
fn generate_audit_key(session: &Session, config: &Pkcs11Config) -> Result<(), BackendError> {
    session
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Label(label(config, "audit")),
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Sign(true),
            ],
        )
        .map_err(|e| failed("generate the audit HMAC key", e))?;
    Ok(())
}

/// Keys that never leave the token.
pub struct Pkcs11Backend {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    identity: ObjectHandle,
    identity_public: VerifyingKey,
    /// The identity key's multiples, for the recovery id of each signature.
    identity_table: SignerTable,
    chain: ObjectHandle,
    chain_public: [u8; 32],
    box_key: ObjectHandle,
    box_public: BoxPublicKey,
    field: ObjectHandle,
    audit: Locked<Secret32>,
    label_prefix: String,
    // Keeps the library loaded for the sessions' lifetime.
    _pkcs11: Pkcs11,
}

impl Pkcs11Backend {
    pub fn load(config: &Pkcs11Config) -> Result<Self, BackendError> {
        let (pkcs11, slot) = open(config)?;
        let pin = read_pin(config)?;
        let count = config
            .sessions
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1);
        let sessions = (0..count)
            .map(|_| {
                let session = pkcs11
                    .open_rw_session(slot)
                    .map_err(|e| failed("session", e))?;
                login(&session, &pin)?;
                Ok(session)
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let s = &sessions[0];
        let identity_public_handle = find(s, config, "identity", ObjectClass::PUBLIC_KEY)?;
        let identity_public =
            VerifyingKey::from_sec1_bytes(&ec_point(s, identity_public_handle, 65)?)
                .map_err(|_| failed("identity", "not a secp256k1 public key"))?;
        let chain_public: [u8; 32] =
            ec_point(s, find(s, config, "chain", ObjectClass::PUBLIC_KEY)?, 32)?
                .try_into()
                .map_err(|_| failed("chain key", "not 32 bytes"))?;
        let box_bytes: [u8; 32] =
            ec_point(s, find(s, config, "box", ObjectClass::PUBLIC_KEY)?, 32)?
                .try_into()
                .map_err(|_| failed("box key", "not 32 bytes"))?;
        let box_public = BoxPublicKey::from_bytes(box_bytes)
            .ok_or_else(|| failed("box key", stream::keys::LOW_ORDER_REASON))?;
        let audit_key = find(s, config, "audit", ObjectClass::SECRET_KEY).map_err(|_| {
            BackendError::setup(
                "pkcs11",
                "the token has no audit HMAC key (keyd init of this version makes it; run `keyd init` again, it adds what is missing and replaces nothing)",
            )
        })?;
        let mac = Zeroizing::new(
            s.sign(&Mechanism::Sha256Hmac, audit_key, AUDIT_LABEL)
                .map_err(|e| failed("HMAC with the audit key", e))?,
        );
        let audit: [u8; 32] = mac
            .as_slice()
            .try_into()
            .map_err(|_| failed("HMAC with the audit key", "not 32 bytes"))?;
        Ok(Pkcs11Backend {
            identity: find(s, config, "identity", ObjectClass::PRIVATE_KEY)?,
            chain: find(s, config, "chain", ObjectClass::PRIVATE_KEY)?,
            box_key: find(s, config, "box", ObjectClass::PRIVATE_KEY)?,
            field: find(s, config, "field", ObjectClass::SECRET_KEY)?,
            identity_table: SignerTable::new(&identity_public),
            identity_public,
            chain_public,
            box_public,
            audit: Locked::new(Secret32::from_bytes(audit)),
            label_prefix: config.label_prefix.clone(),
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            _pkcs11: pkcs11,
        })
    }

    /// Runs `f` on a free session (waiting on one, in turn, only when all are busy), so
    /// concurrent signers never queue behind each other while a session is idle.
    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        for slot in &self.sessions {
            if let Ok(session) = slot.try_lock() {
                return f(&session);
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        let session = self.sessions[i]
            .lock()
            .map_err(|_| failed("session", "lock poisoned"))?;
        f(&session)
    }
}

/// Runs a GCM encryption whose IV buffer the token may overwrite: some tokens (FIPS mode)
/// ignore the caller's IV and write back the one they generated, which is then the IV the
/// ciphertext needs. Returns the IV actually used and the ciphertext.
fn gcm_with_token_iv(
    mut iv: [u8; 12],
    encrypt: impl FnOnce(&mut [u8]) -> Result<Vec<u8>, BackendError>,
) -> Result<([u8; 12], Vec<u8>), BackendError> {
    let ciphertext = encrypt(&mut iv)?;
    Ok((iv, ciphertext))
}

impl Pkcs11Backend {
    /// The sequence objects in the token (normally one; two for a moment while raising).
    fn sequence_objects(&self, session: &Session) -> Result<Vec<ObjectHandle>, BackendError> {
        session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(format!("{}-sequence", self.label_prefix).into_bytes()),
            ])
            .map_err(|e| failed("find the sequence object", e))
    }

    fn read_ceiling(&self, session: &Session, object: ObjectHandle) -> Result<u64, BackendError> {
        let value = session
            .get_attributes(object, &[AttributeType::Value])
            .map_err(|e| failed("read the sequence object", e))?;
        match value.into_iter().next() {
            Some(Attribute::Value(bytes)) if bytes.len() == 8 => {
                Ok(u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8])))
            }
            _ => Err(failed("read the sequence object", "not 8 bytes")),
        }
    }

    /// The highest ceiling any sequence object holds.
    fn highest_ceiling(&self, session: &Session) -> Result<Option<u64>, BackendError> {
        let mut highest = None;
        for object in self.sequence_objects(session)? {
            let value = self.read_ceiling(session, object)?;
            highest = highest.max(Some(value));
        }
        Ok(highest)
    }
}

impl crate::guard::CeilingStore for Pkcs11Backend {
    fn read(&self) -> Result<Option<u64>, String> {
        self.with_session(|s| self.highest_ceiling(s))
            .map_err(|e| e.to_string())
    }

    /// Tokens need not let a data object's value change (SoftHSM does not), so a raise makes
    /// a new object first and only then removes the old ones: a crash in between leaves two,
    /// and the higher counts.
    fn raise(&self, ceiling: u64) -> Result<u64, String> {
        let want = super::ceiling_step_above(ceiling);
        self.with_session(|s| {
            let old = self.sequence_objects(s)?;
            if let Some(held) = self.highest_ceiling(s)? {
                if held >= want {
                    return Ok(held);
                }
            }
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(format!("{}-sequence", self.label_prefix).into_bytes()),
                Attribute::Application(b"keyd".to_vec()),
                Attribute::Value(want.to_be_bytes().to_vec()),
            ])
            .map_err(|e| failed("write the sequence object", e))?;
            for object in old {
                s.destroy_object(object)
                    .map_err(|e| failed("remove the old sequence object", e))?;
            }
            Ok(want)
        })
        .map_err(|e| e.to_string())
    }
}

/// Whether the token keys are sensitive and non-extractable, and always were
/// (for `keyd status` and the tests).
pub fn key_protection(config: &Pkcs11Config) -> Result<Vec<(String, bool)>, BackendError> {
    let (pkcs11, slot) = open(config)?;
    let session = pkcs11
        .open_ro_session(slot)
        .map_err(|e| failed("session", e))?;
    login(&session, &read_pin(config)?)?;
    let mut out = Vec::new();
    for (role, class) in [
        ("identity", ObjectClass::PRIVATE_KEY),
        ("chain", ObjectClass::PRIVATE_KEY),
        ("box", ObjectClass::PRIVATE_KEY),
        ("field", ObjectClass::SECRET_KEY),
        ("audit", ObjectClass::SECRET_KEY),
    ] {
        let key = find(&session, config, role, class)?;
        let attributes = session
            .get_attributes(
                key,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                ],
            )
            .map_err(|e| failed("attributes", e))?;
        let protected = attributes.iter().all(|a| match a {
            Attribute::Sensitive(v)
            | Attribute::AlwaysSensitive(v)
            | Attribute::NeverExtractable(v) => *v,
            Attribute::Extractable(v) => !*v,
            _ => false,
        }) && attributes.len() == 4;
        out.push((role.to_string(), protected));
    }
    Ok(out)
}

impl Backend for Pkcs11Backend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            class: "tee",
            detail: "pkcs11",
            memory_locked: true,
        }
    }
    fn identity_public(&self) -> VerifyingKey {
        self.identity_public
    }
    fn chain_public(&self) -> [u8; 32] {
        self.chain_public
    }
    fn box_public(&self) -> BoxPublicKey {
        self.box_public
    }
    fn sign_secp256k1_prehash(&self, digest: &[u8; 32]) -> Result<[u8; 65], BackendError> {
        let raw = self.with_session(|s| {
            s.sign(&Mechanism::Ecdsa, self.identity, digest)
                .map_err(|e| failed("ECDSA", e))
        })?;
        let signature = Signature::from_slice(&raw).map_err(|_| failed("ECDSA", "not r ‖ s"))?;
        // About half of the token's signatures are high-s: normalize, then compute v (by
        // trial in the negligible case the direct computation cannot tell).
        let signature = signature.normalize_s().unwrap_or(signature);
        if let Some(id) = self.identity_table.recovery_id(digest, &signature) {
            let mut out = [0u8; 65];
            out[..64].copy_from_slice(&signature.to_bytes());
            out[64] = 27 + id.to_byte();
            return Ok(out);
        }
        for v in 0u8..2 {
            let id = RecoveryId::from_byte(v).expect("0 and 1 are recovery ids");
            if VerifyingKey::recover_from_prehash(digest, &signature, id).ok()
                == Some(self.identity_public)
            {
                let mut out = [0u8; 65];
                out[..64].copy_from_slice(&signature.to_bytes());
                out[64] = 27 + v;
                return Ok(out);
            }
        }
        Err(failed(
            "ECDSA",
            "the token's signature does not recover the identity key",
        ))
    }
    fn sign_ed25519(&self, message: &[u8]) -> Result<[u8; 64], BackendError> {
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let raw = self.with_session(|s| {
            s.sign(&mechanism, self.chain, message)
                .map_err(|e| failed("EdDSA", e))
        })?;
        raw.try_into()
            .map_err(|_| failed("EdDSA", "not a 64-byte signature"))
    }
    fn x25519(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, BackendError> {
        let mechanism = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer));
        // The shared secret comes out as a short-lived session object, destroyed at once.
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        self.with_session(|s| {
            let derived = s
                .derive_key(&mechanism, self.box_key, &template)
                .map_err(|e| failed("ECDH", e))?;
            let value = s.get_attributes(derived, &[AttributeType::Value]);
            let _ = s.destroy_object(derived);
            let Some(Attribute::Value(bytes)) =
                value.map_err(|e| failed("ECDH", e))?.into_iter().next()
            else {
                return Err(failed("ECDH", "no derived value"));
            };
            let bytes = Zeroizing::new(bytes);
            let shared: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| failed("ECDH", "not 32 bytes"))?;
            Ok(Zeroizing::new(shared))
        })
    }
    fn aes_gcm_encrypt(&self, plaintext: &[u8]) -> Result<([u8; 12], Vec<u8>), BackendError> {
        let mut iv = [0u8; 12];
        getrandom::getrandom(&mut iv)
            .map_err(|_| failed("AES-GCM", "the OS random number generator failed"))?;
        self.with_session(|s| {
            gcm_with_token_iv(iv, |iv| {
                let params =
                    GcmParams::new(iv, &[], 128.into()).map_err(|e| failed("AES-GCM", e))?;
                s.encrypt(&Mechanism::AesGcm(params), self.field, plaintext)
                    .map_err(|e| failed("AES-GCM", e))
            })
        })
    }
    fn audit_key(&self) -> &Secret32 {
        &self.audit
    }
    fn ceiling_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::guard::CeilingStore>> {
        Some(self)
    }
    fn random(&self, out: &mut [u8]) -> Result<(), BackendError> {
        self.with_session(|s| {
            s.generate_random_slice(out)
                .map_err(|e| failed("random", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token that writes its own IV back into the parameters: the ciphertext is returned
    /// with that IV, not the one keyd proposed (which would not decrypt).
    #[test]
    fn the_iv_the_token_returns_is_the_one_used() {
        let proposed = [1u8; 12];
        let (used, ciphertext) = gcm_with_token_iv(proposed, |iv| {
            iv.copy_from_slice(&[9u8; 12]);
            Ok(vec![7u8; 20])
        })
        .unwrap();
        assert_eq!(used, [9u8; 12]);
        assert_eq!(ciphertext, vec![7u8; 20]);
        let (kept, _) = gcm_with_token_iv(proposed, |_| Ok(vec![])).unwrap();
        assert_eq!(kept, proposed);
    }
}
