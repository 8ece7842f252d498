//! The TPM 2.0 backend. A TPM has no secp256k1, Ed25519 or X25519, so keyd makes the four
//! keys from TPM and OS randomness and seals them (128 bytes, the TPM's limit for one
//! sealed object) under an owner-hierarchy storage key, bound to a PolicyPCR, an auth value
//! (`auth_file`), or both: never to nothing, or anyone who reaches the TPM could unseal
//! them. At start it unseals them once, in a session salted to the storage key with the
//! response encrypted, into locked, zeroized memory; stale transient handles are flushed
//! first, and keyd is the TPM's one owner for its lifetime (randomness at run time). An NV
//! counter holds the sequence guard's ceiling, so a wiped state directory cannot restart
//! the sequence.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use stream::keys::{BoxPublicKey, Secret32};
use tss_esapi::attributes::{
    NvIndexAttributesBuilder, ObjectAttributesBuilder, SessionAttributesBuilder,
};
use tss_esapi::constants::{CapabilityType, NvIndexType, SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, KeyedHashScheme, NvPublicBuilder, PcrSelectionListBuilder,
    PcrSlot, Private, Public, PublicBuilder, PublicKeyedHashParameters, RsaExponent, SensitiveData,
    SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::software::SoftwareBackend;
use super::{Backend, BackendError, BackendInfo};

/// `[tpm]` in keyd's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// Where the sealed blobs live (`keys.pub`, `keys.priv`).
    pub blob_dir: PathBuf,
    /// SHA-256 PCRs the keys are bound to (e.g. `[7]`, Secure Boot state).
    #[serde(default)]
    pub pcrs: Vec<u8>,
    /// A file (0600, keyd's user) holding the sealed object's auth value: the keys unseal
    /// only with it. `pcrs`, `auth_file` or both must be set.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// The NV counter that holds the sequence guard's ceiling (owner hierarchy).
    #[serde(default = "default_nv_index")]
    pub sequence_nv_index: u32,
}

fn default_nv_index() -> u32 {
    0x0150_4b44
}

fn failed(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::failed("tpm", what, e)
}

/// What binds the sealed keys: refuses a configuration that binds them to nothing.
fn check_binding(config: &TpmConfig) -> Result<(), BackendError> {
    if config.pcrs.is_empty() && config.auth_file.is_none() {
        return Err(BackendError::setup(
            "tpm",
            "[tpm] sets neither pcrs nor auth_file: sealed under an empty password, the keys would unseal for anyone who can reach the TPM; set pcrs (e.g. [7]) and/or auth_file",
        ));
    }
    Ok(())
}

/// The sealed object's auth value, from `auth_file` (a private file of keyd's user).
fn read_auth(config: &TpmConfig) -> Result<Option<Auth>, BackendError> {
    let Some(path) = &config.auth_file else {
        return Ok(None);
    };
    let shown = format!("auth_file {}", path.display());
    crate::files::check_private(path).map_err(|e| BackendError::setup("tpm", e))?;
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| failed(&shown, e))?);
    let trimmed: &[u8] = {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        &bytes[..end]
    };
    if trimmed.is_empty() {
        return Err(BackendError::setup("tpm", format!("{shown} is empty")));
    }
    // The auth value is the SHA-256 of the file's content: any length in, 32 bytes out.
    let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(trimmed)));
    Auth::try_from(digest.to_vec())
        .map(Some)
        .map_err(|e| failed(&shown, e))
}

fn context(config: &TpmConfig) -> Result<Context, BackendError> {
    let tcti = TctiNameConf::from_str(&config.tcti)
        .map_err(|e| failed(&format!("tcti {:?}", config.tcti), e))?;
    let mut ctx = Context::new(tcti).map_err(|e| failed("connect", e))?;
    flush_transient(&mut ctx)?;
    Ok(ctx)
}

/// Without a resource manager only a few transient objects fit, and a crashed process
/// leaves its objects behind: flush them all.
fn flush_transient(ctx: &mut Context) -> Result<(), BackendError> {
    const TRANSIENT_FIRST: u32 = 0x8000_0000;
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, TRANSIENT_FIRST, 64))
        .map_err(|e| failed("list handles", e))?;
    if let CapabilityData::Handles(handles) = data {
        for handle in handles.iter() {
            if let Ok(object) = ctx.tr_from_tpm_public(*handle) {
                let _ = ctx.flush_context(object);
            }
        }
    }
    Ok(())
}

/// The storage key under which the keys are sealed: the same template always gives the
/// same key (derived from the owner seed), so nothing but the sealed blob is stored.
fn primary(ctx: &mut Context) -> Result<KeyHandle, BackendError> {
    let public = tss_esapi::utils::create_restricted_decryption_rsa_public(
        SymmetricDefinitionObject::AES_128_CFB,
        RsaKeyBits::Rsa2048,
        RsaExponent::default(),
    )
    .map_err(|e| failed("storage key template", e))?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.create_primary(Hierarchy::Owner, public, None, None, None, None)
    })
    .map(|r| r.key_handle)
    .map_err(|e| failed("storage key", e))
}

fn pcr_selection(
    config: &TpmConfig,
) -> Result<tss_esapi::structures::PcrSelectionList, BackendError> {
    let slots = config
        .pcrs
        .iter()
        .map(|p| PcrSlot::try_from(1u32 << p).map_err(|e| failed(&format!("pcr {p}"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(|e| failed("pcr selection", e))
}

/// A session for the sealed object: trial (to compute the policy digest at `init`) or real
/// (to unseal), salted to the storage key `salt` so its secrets and the response
/// (`encrypt`) are protected on the TPM's bus. With PCRs, a policy session satisfied by
/// their current values (and the auth value, with one); without, an HMAC session.
fn object_session(
    ctx: &mut Context,
    config: &TpmConfig,
    trial: bool,
    salt: Option<KeyHandle>,
) -> Result<AuthSession, BackendError> {
    let kind = match (trial, config.pcrs.is_empty()) {
        (true, _) => SessionType::Trial,
        (false, false) => SessionType::Policy,
        (false, true) => SessionType::Hmac,
    };
    let session = ctx
        .start_auth_session(
            salt,
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(|e| failed("session", e))?
        .ok_or_else(|| failed("session", "none returned"))?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_decrypt(true)
        .with_encrypt(true)
        .build();
    ctx.tr_sess_set_attributes(session, attributes, mask)
        .map_err(|e| failed("session", e))?;
    if kind == SessionType::Hmac {
        return Ok(session);
    }
    let policy = PolicySession::try_from(session).map_err(|e| failed("policy session", e))?;
    if !config.pcrs.is_empty() {
        ctx.policy_pcr(policy, Digest::default(), pcr_selection(config)?)
            .map_err(|e| failed("PolicyPCR", e))?;
    }
    if config.auth_file.is_some() {
        ctx.policy_auth_value(policy)
            .map_err(|e| failed("PolicyAuthValue", e))?;
    }
    Ok(session)
}

fn flush_session(ctx: &mut Context, session: AuthSession) {
    if !matches!(session, AuthSession::Password) {
        let handle = tss_esapi::handles::SessionHandle::from(session);
        let _ = ctx.flush_context(ObjectHandle::from(handle));
    }
}

fn blob_paths(config: &TpmConfig) -> (PathBuf, PathBuf) {
    (
        config.blob_dir.join("keys.pub"),
        config.blob_dir.join("keys.priv"),
    )
}

/// Makes the keys and seals them to the TPM. Refuses to replace sealed keys unless `force`.
pub fn generate(config: &TpmConfig, force: bool) -> Result<(), BackendError> {
    check_binding(config)?;
    let auth = read_auth(config)?;
    let (pub_path, priv_path) = blob_paths(config);
    if (pub_path.exists() || priv_path.exists()) && !force {
        return Err(failed(
            "init",
            format!(
                "{} holds sealed keys; keyd init never replaces keys without --force",
                config.blob_dir.display()
            ),
        ));
    }
    let mut ctx = context(config)?;
    // 128 bytes: identity, chain, box, field. Each 32 = SHA-256(TPM random ‖ OS random).
    let mut secret = Zeroizing::new([0u8; 128]);
    for part in secret.chunks_mut(32) {
        loop {
            let tpm = ctx.get_random(32).map_err(|e| failed("random", e))?;
            let mut os = Zeroizing::new([0u8; 32]);
            getrandom::getrandom(&mut *os)
                .map_err(|_| failed("random", "the OS random number generator failed"))?;
            let mut mix = Sha256::new();
            mix.update(tpm.value());
            mix.update(*os);
            part.copy_from_slice(&mix.finalize());
            // The identity must be a valid secp256k1 scalar (fails with negligible odds).
            if k256::ecdsa::SigningKey::from_slice(part).is_ok() {
                break;
            }
        }
    }
    let mut attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true);
    let policy = if config.pcrs.is_empty() {
        // The auth value alone (checked above that there is one), in an HMAC session.
        attributes = attributes.with_user_with_auth(true);
        Digest::default()
    } else {
        let trial = object_session(&mut ctx, config, true, None)?;
        let digest = PolicySession::try_from(trial)
            .map_err(|e| failed("policy session", e))
            .and_then(|p| {
                ctx.policy_get_digest(p)
                    .map_err(|e| failed("policy digest", e))
            });
        flush_session(&mut ctx, trial);
        digest?
    };
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(
            attributes
                .build()
                .map_err(|e| failed("sealed object attributes", e))?,
        )
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Default::default())
        .build()
        .map_err(|e| failed("sealed object template", e))?;
    let parent = primary(&mut ctx)?;
    let sensitive =
        SensitiveData::try_from(secret.to_vec()).map_err(|e| failed("sealed data", e))?;
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create(parent, public, auth, Some(sensitive), None, None)
        })
        .map_err(|e| failed("seal", e));
    let _ = ctx.flush_context(parent.into());
    let created = created?;
    std::fs::create_dir_all(&config.blob_dir)
        .map_err(|e| failed(&config.blob_dir.display().to_string(), e))?;
    let public_blob = created
        .out_public
        .marshall()
        .map_err(|e| failed("marshal public", e))?;
    write_tpm2b(&pub_path, &public_blob)?;
    write_tpm2b(&priv_path, created.out_private.value())?;
    Ok(())
}

/// Writes a TPM2B (big-endian u16 size, then the bytes), as tpm2-tools reads it: a new
/// file only keyd's user may read, replaced atomically.
fn write_tpm2b(path: &Path, body: &[u8]) -> Result<(), BackendError> {
    let size = u16::try_from(body.len()).map_err(|_| failed("blob", "larger than a TPM2B"))?;
    let mut bytes = size.to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    stream::fsio::write_atomic_private(path, &bytes, stream::fsio::Durability::Synced)
        .map_err(|e| failed(&path.display().to_string(), e))
}

fn read_tpm2b(path: &Path) -> Result<Vec<u8>, BackendError> {
    let bytes = std::fs::read(path)
        .map_err(|e| failed(&format!("{} (run keyd init)", path.display()), e))?;
    let size = bytes
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
    match size {
        Some(size) if bytes.len() == size + 2 => Ok(bytes[2..].to_vec()),
        _ => Err(failed(&path.display().to_string(), "not a TPM2B blob")),
    }
}

/// Keys unsealed from the TPM, held like the software backend's, in locked memory.
pub struct TpmBackend {
    keys: SoftwareBackend,
    ctx: Mutex<Context>,
    nv_index: NvIndexTpmHandle,
}

impl TpmBackend {
    pub fn load(config: &TpmConfig) -> Result<Self, BackendError> {
        check_binding(config)?;
        let auth = read_auth(config)?;
        let (pub_path, priv_path) = blob_paths(config);
        let public = Public::unmarshall(&read_tpm2b(&pub_path)?)
            .map_err(|e| failed("sealed public blob", e))?;
        let private = Private::try_from(read_tpm2b(&priv_path)?)
            .map_err(|e| failed("sealed private blob", e))?;
        let mut ctx = context(config)?;
        let parent = primary(&mut ctx)?;
        let loaded = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.load(parent, private, public)
        });
        let object: ObjectHandle = match loaded {
            Ok(handle) => handle.into(),
            Err(e) => {
                let _ = ctx.flush_context(parent.into());
                return Err(failed("load sealed keys", e));
            }
        };
        let unsealed = (|| {
            if let Some(auth) = auth {
                ctx.tr_set_auth(object, auth)
                    .map_err(|e| failed("auth value", e))?;
            }
            let session = object_session(&mut ctx, config, false, Some(parent))?;
            let result = ctx.execute_with_session(Some(session), |c| c.unseal(object));
            flush_session(&mut ctx, session);
            result.map_err(|e| {
                failed(
                    "unseal (keys bound to PCRs that changed, a wrong auth value, or another TPM)",
                    e,
                )
            })
        })();
        let _ = ctx.flush_context(object);
        let _ = ctx.flush_context(parent.into());
        let secret = Zeroizing::new(unsealed?.value().to_vec());
        if secret.len() != 128 {
            return Err(failed(
                "unseal",
                "the sealed object does not hold keyd's keys",
            ));
        }
        let part =
            |i: usize| -> [u8; 32] { secret[i * 32..(i + 1) * 32].try_into().unwrap_or([0; 32]) };
        let keys = SoftwareBackend::from_secrets(&part(0), &part(1), &part(2), &part(3))
            .map_err(|e| failed("unsealed keys", e))?;
        let nv_index = NvIndexTpmHandle::new(config.sequence_nv_index)
            .map_err(|e| failed("sequence_nv_index", e))?;
        Ok(TpmBackend {
            keys,
            ctx: Mutex::new(ctx),
            nv_index,
        })
    }

    /// The counter's ESYS handle, `None` when the index is not defined yet.
    fn counter(&self, ctx: &mut Context) -> Option<NvIndexHandle> {
        ctx.tr_from_tpm_public(TpmHandle::NvIndex(self.nv_index))
            .ok()
            .map(NvIndexHandle::from)
    }

    /// Defines the counter (owner hierarchy, its own empty auth for read and increment,
    /// orderly: kept in RAM between orderly shutdowns, advanced after a disorderly one).
    fn define_counter(&self, ctx: &mut Context) -> Result<NvIndexHandle, BackendError> {
        let attributes = NvIndexAttributesBuilder::new()
            .with_nv_index_type(NvIndexType::Counter)
            .with_auth_write(true)
            .with_auth_read(true)
            .with_no_da(true)
            .with_orderly(true)
            .build()
            .map_err(|e| failed("NV counter attributes", e))?;
        let public = NvPublicBuilder::new()
            .with_nv_index(self.nv_index)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(8)
            .build()
            .map_err(|e| failed("NV counter", e))?;
        let handle = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_define_space(Provision::Owner, None, public)
            })
            .map_err(|e| failed("define the sequence NV counter", e))?;
        // A new counter starts at the highest value any counter of this TPM ever held.
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_increment(NvAuth::NvIndex(handle), handle)
        })
        .map_err(|e| failed("initialize the sequence NV counter", e))?;
        Ok(handle)
    }

    fn read_counter(ctx: &mut Context, handle: NvIndexHandle) -> Result<u64, BackendError> {
        match ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_read(NvAuth::NvIndex(handle), handle, 8, 0)
        }) {
            Ok(data) => {
                let bytes: [u8; 8] = data
                    .value()
                    .try_into()
                    .map_err(|_| failed("sequence NV counter", "not 8 bytes"))?;
                Ok(u64::from_be_bytes(bytes))
            }
            Err(tss_esapi::Error::Tss2Error(rc))
                if rc.kind() == Some(Tss2ResponseCodeKind::NvUninitialized) =>
            {
                Ok(0)
            }
            Err(e) => Err(failed("read the sequence NV counter", e)),
        }
    }
}

impl crate::guard::CeilingStore for TpmBackend {
    fn read(&self) -> Result<Option<u64>, String> {
        let mut ctx = self
            .ctx
            .lock()
            .map_err(|_| "TPM context lock poisoned".to_string())?;
        let Some(handle) = self.counter(&mut ctx) else {
            return Ok(None);
        };
        let count = Self::read_counter(&mut ctx, handle).map_err(|e| e.to_string())?;
        Ok(Some(count.saturating_mul(super::CEILING_STEP)))
    }

    fn raise(&self, ceiling: u64) -> Result<u64, String> {
        let mut ctx = self
            .ctx
            .lock()
            .map_err(|_| "TPM context lock poisoned".to_string())?;
        let handle = match self.counter(&mut ctx) {
            Some(handle) => handle,
            None => self.define_counter(&mut ctx).map_err(|e| e.to_string())?,
        };
        let want = super::ceiling_step_above(ceiling) / super::CEILING_STEP;
        let mut count = Self::read_counter(&mut ctx, handle).map_err(|e| e.to_string())?;
        while count < want {
            ctx.execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_increment(NvAuth::NvIndex(handle), handle)
            })
            .map_err(|e| failed("raise the sequence NV counter", e).to_string())?;
            count = Self::read_counter(&mut ctx, handle).map_err(|e| e.to_string())?;
        }
        Ok(count.saturating_mul(super::CEILING_STEP))
    }
}

impl Backend for TpmBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            class: "tee",
            detail: "tpm",
            memory_locked: self.keys.info().memory_locked,
        }
    }
    fn identity_public(&self) -> k256::ecdsa::VerifyingKey {
        self.keys.identity_public()
    }
    fn chain_public(&self) -> [u8; 32] {
        self.keys.chain_public()
    }
    fn box_public(&self) -> BoxPublicKey {
        self.keys.box_public()
    }
    fn sign_secp256k1_prehash(&self, digest: &[u8; 32]) -> Result<[u8; 65], BackendError> {
        self.keys.sign_secp256k1_prehash(digest)
    }
    fn sign_ed25519(&self, message: &[u8]) -> Result<[u8; 64], BackendError> {
        self.keys.sign_ed25519(message)
    }
    fn x25519(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, BackendError> {
        self.keys.x25519(peer)
    }
    fn aes_gcm_encrypt(&self, plaintext: &[u8]) -> Result<([u8; 12], Vec<u8>), BackendError> {
        self.keys.aes_gcm_encrypt(plaintext)
    }
    fn audit_key(&self) -> &Secret32 {
        self.keys.audit_key()
    }
    fn ceiling_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::guard::CeilingStore>> {
        Some(self)
    }
    fn random(&self, out: &mut [u8]) -> Result<(), BackendError> {
        let mut ctx = self
            .ctx
            .lock()
            .map_err(|_| failed("random", "lock poisoned"))?;
        for part in out.chunks_mut(32) {
            let bytes = ctx
                .get_random(part.len())
                .map_err(|e| failed("random", e))?;
            part.copy_from_slice(bytes.value());
        }
        Ok(())
    }
}
