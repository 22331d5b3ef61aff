//! Encrypted conversations on the device: one MLS group per conversation (its
//! group id is the conversation id's 16 bytes), every device of every member
//! a leaf. natterd orders everything in the conversation's seq and accepts one
//! commit per epoch; this module makes commits, encrypts, and opens what
//! arrives, in that order.

use natter_proto::wire;
use natter_proto::ErrorCode;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::OpenMlsProvider as _;
use openmls::prelude::{
    GroupId, KeyPackage, KeyPackageIn, LeafNodeParameters, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProtocolVersion, StagedWelcome,
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use rusqlite::OptionalExtension as _;

use super::{capabilities, claim_key_packages, group_info, mls, E2eeError, MlsDevice, CIPHERSUITE};
use crate::{Client, ClientError};

/// Epochs whose keys a member keeps, for application messages sent just
/// before a commit it already processed.
const PAST_EPOCHS: usize = 5;

/// What a message of an encrypted conversation turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// An application message: its text.
    Text { sender_user_id: String, text: String },
    /// An application message carrying an encrypted file ([`MlsDevice::fetch_file`]).
    File { sender_user_id: String, file: wire::EncryptedFile },
    /// A commit this device processed (or made): the group's epoch now.
    Commit { epoch: u64 },
    /// The Welcome in this commit let this device join; the group's epoch now.
    Joined { epoch: u64 },
    /// Not for this device: a message or commit from before it joined, or a
    /// Welcome for others in a group it is not in yet.
    NotForMe,
}

/// A hit of [`MlsDevice::search_local`]: the matches in `[brackets]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHit {
    pub conversation_id: String,
    pub seq: u64,
    pub sender_user_id: String,
    pub snippet: String,
}

fn group_id(conversation_id: &str) -> Result<GroupId, E2eeError> {
    let id = uuid::Uuid::parse_str(conversation_id).map_err(|_| mls(format!("{conversation_id:?} is not an id")))?;
    Ok(GroupId::from_slice(id.as_bytes()))
}

fn bytes(m: &MlsMessageOut) -> Result<Vec<u8>, E2eeError> {
    m.tls_serialize_detached().map_err(mls)
}

fn message_in(b: &[u8]) -> Result<MlsMessageIn, E2eeError> {
    MlsMessageIn::tls_deserialize_exact(b).map_err(mls)
}

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        // Commits go out as PublicMessages: natterd checks them.
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .capabilities(capabilities())
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .build()
}

impl MlsDevice {
    fn load(&self, conversation_id: &str) -> Result<Option<MlsGroup>, E2eeError> {
        MlsGroup::load(self.provider.storage(), &group_id(conversation_id)?).map_err(mls)
    }

    fn group(&self, conversation_id: &str) -> Result<MlsGroup, E2eeError> {
        self.load(conversation_id)?
            .ok_or_else(|| mls(format!("this device is not in conversation {conversation_id}'s group")))
    }

    /// The group's epoch on this device, if it is in the group.
    ///
    /// # Errors
    /// The state file failed.
    pub fn epoch(&self, conversation_id: &str) -> Result<Option<u64>, E2eeError> {
        Ok(self.load(conversation_id)?.map(|g| g.epoch().as_u64()))
    }

    /// A value all members share in an epoch (RFC 9420 section 8.7): equal on
    /// two devices means they are in the same group state.
    ///
    /// # Errors
    /// Not in the group.
    pub fn epoch_authenticator(&self, conversation_id: &str) -> Result<Vec<u8>, E2eeError> {
        Ok(self.group(conversation_id)?.epoch_authenticator().as_slice().to_vec())
    }

    /// Starts the MLS group of a new encrypted conversation, or brings an
    /// existing one in line with the conversation: removes the leaves of
    /// people who are no longer members and of devices signed out (or with a
    /// new key), then claims a KeyPackage of every device of every member (this
    /// user's other devices too) that is not a leaf yet and adds them all, each
    /// in one commit with its Welcome. Returns the last commit's seq, or `None`
    /// when the group already matched.
    ///
    /// # Errors
    /// What natterd answered (`STALE_EPOCH`: another commit of this epoch won;
    /// [`Self::catch_up`] and retry), or openmls failed.
    pub async fn create_group(
        &self,
        client: &Client,
        conversation: &wire::Conversation,
    ) -> Result<Option<u64>, E2eeError> {
        let id = &conversation.conversation_id;
        self.settle(client, id).await?;
        let mut users: Vec<&str> = conversation.members.iter().map(|m| m.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let mut keys = std::collections::HashMap::new();
        for user in &users {
            keys.insert(user.to_string(), super::device_keys(client, user).await?.devices);
        }
        let fresh = self.locked(|| {
            if self.load(id)?.is_some() {
                return Ok(false);
            }
            MlsGroup::new_with_group_id(
                &self.provider,
                &self.signer,
                &create_config(),
                group_id(id)?,
                self.credential.clone(),
            )
            .map_err(mls)?;
            self.joined(id, 0)?;
            Ok(true)
        })?;
        // Leaves to go: not a member's, or not a device they still have.
        let removal = self.stage(id, |group| {
            let own = group.own_leaf_index();
            let stale: Vec<_> = group
                .members()
                .filter(|m| m.index != own)
                .filter(|m| {
                    let Some((user, device)) = leaf_identity(&m.credential) else { return true };
                    !keys.get(&user).is_some_and(|devices| {
                        devices.iter().any(|d| d.device_id == device && d.signature_key == m.signature_key)
                    })
                })
                .map(|m| m.index)
                .collect();
            if stale.is_empty() {
                return Ok(None);
            }
            self.removing(group, &stale).map(Some)
        })?;
        let mut last = None;
        if let Some(content) = removal {
            last = Some(self.send_commit(client, id, content).await?);
        }
        let leaves: std::collections::HashSet<Vec<u8>> =
            self.locked(|| Ok(self.group(id)?.members().map(|m| m.signature_key).collect()))?;
        let mut packages = Vec::new();
        for user in users {
            if keys[user].iter().all(|d| leaves.contains(&d.signature_key)) {
                continue;
            }
            for claimed in claim_key_packages(client, user).await?.packages {
                packages.push(claimed.key_package);
            }
        }
        if !packages.is_empty() {
            match self.add_packages(client, id, &packages).await {
                Ok(Some(seq)) => last = Some(seq),
                Ok(None) => {}
                Err(e) => {
                    // Another device started the group first: this one's
                    // group never existed for anyone else.
                    if fresh && matches!(e, E2eeError::Client(ClientError::Server { .. })) {
                        self.locked(|| self.forget_group(id))?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(last)
    }

    /// Makes this device a leaf of an encrypted conversation's group, however
    /// it stands, and the group match the conversation: catches up (a Welcome
    /// may have added it), joins by external commit when the group exists
    /// without it (a new device, or one that lost its state), or starts the
    /// group when nobody has; then [`Self::create_group`] removes stale leaves
    /// and adds missing devices. A commit that loses its epoch to another
    /// (`STALE_EPOCH`) is made again on the new epoch, a few times.
    ///
    /// # Errors
    /// What natterd answered, or openmls failed.
    pub async fn enter(&self, client: &Client, conversation: &wire::Conversation) -> Result<(), E2eeError> {
        const ATTEMPTS: usize = 5;
        let id = &conversation.conversation_id;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tried = async {
                self.catch_up(client, id).await?;
                if self.load(id)?.is_none() {
                    let info = group_info(client, id).await?;
                    if info.epoch > 0 {
                        self.join_external(client, id, &info).await?;
                    }
                }
                self.create_group(client, conversation).await
            };
            match tried.await {
                Ok(_) => return Ok(()),
                Err(e) if is_stale_epoch(&e) && attempt < ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Joins the conversation's group by an external commit (RFC 9420
    /// section 12.4.3.2) made on `info`, the GroupInfo natterd keeps
    /// ([`super::group_info`]): for a device of a member that is not a leaf.
    /// It reads what is sent from the commit's epoch on. Returns the commit's seq.
    ///
    /// # Errors
    /// This device is in the group already; `STALE_EPOCH` when another
    /// commit came first (nothing of the join is kept: fetch the GroupInfo
    /// again and retry); what natterd answered.
    pub async fn join_external(
        &self,
        client: &Client,
        conversation_id: &str,
        info: &wire::GroupInfo,
    ) -> Result<u64, E2eeError> {
        self.settle(client, conversation_id).await?;
        let MlsMessageBodyIn::GroupInfo(verifiable) = message_in(&info.group_info)?.extract() else {
            return Err(mls("natterd's group_info is not a GroupInfo"));
        };
        let content = self.locked(|| {
            if self.load(conversation_id)?.is_some() {
                return Err(mls("this device is in the group already"));
            }
            let (group, bundle) = MlsGroup::external_commit_builder()
                .with_config(join_config())
                .build_group(&self.provider, verifiable, self.credential.clone())
                .map_err(mls)?
                .leaf_node_parameters(LeafNodeParameters::builder().with_capabilities(capabilities()).build())
                .load_psks(self.provider.storage())
                .map_err(mls)?
                .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
                .map_err(mls)?
                .finalize(&self.provider)
                .map_err(mls)?;
            let (commit, _, next) = bundle.into_contents();
            let content = wire::MlsCommit {
                commit: bytes(&commit)?,
                welcome: Vec::new(),
                group_info: bytes(&MlsMessageOut::from(next.ok_or_else(|| mls("openmls made no GroupInfo"))?))?,
                epoch: info.epoch,
            };
            // openmls merged the join already: until natterd accepts it, the
            // group stays noted as pending and goes if the commit does.
            self.note_pending(conversation_id, &content.commit)?;
            self.joined(conversation_id, group.epoch().as_u64())?;
            Ok(content)
        })?;
        self.send_commit(client, conversation_id, content).await
    }

    /// Adds the devices of these KeyPackages (TLS-serialized, as claimed) to
    /// the conversation's group in one commit. Returns its seq.
    ///
    /// # Errors
    /// A package that does not validate, or what natterd answered
    /// (`MLS_MESSAGE_INVALID` for a device that is not a member's).
    pub async fn add_key_packages(
        &self,
        client: &Client,
        conversation_id: &str,
        packages: &[Vec<u8>],
    ) -> Result<u64, E2eeError> {
        self.settle(client, conversation_id).await?;
        self.add_packages(client, conversation_id, packages).await?.ok_or_else(|| mls("every device is a leaf already"))
    }

    /// Adds the packages' devices that are not leaves yet; `None` when none is left.
    async fn add_packages(
        &self,
        client: &Client,
        conversation_id: &str,
        packages: &[Vec<u8>],
    ) -> Result<Option<u64>, E2eeError> {
        let mut valid = Vec::with_capacity(packages.len());
        for p in packages {
            valid.push(
                KeyPackageIn::tls_deserialize_exact(p)
                    .map_err(mls)?
                    .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                    .map_err(|e| mls(format!("a claimed KeyPackage does not validate: {e}")))?,
            );
        }
        let content = self.stage(conversation_id, |group| {
            let leaves: std::collections::HashSet<Vec<u8>> = group.members().map(|m| m.signature_key).collect();
            let new: Vec<KeyPackage> =
                valid.iter().filter(|k| !leaves.contains(k.leaf_node().signature_key().as_slice())).cloned().collect();
            if new.is_empty() {
                return Ok(None);
            }
            let (commit, welcome, group_info) = group.add_members(&self.provider, &self.signer, &new).map_err(mls)?;
            let group_info = group_info.ok_or_else(|| mls("openmls made no GroupInfo"))?;
            Ok(Some(wire::MlsCommit {
                commit: bytes(&commit)?,
                welcome: bytes(&welcome)?,
                group_info: bytes(&MlsMessageOut::from(group_info))?,
                epoch: group.epoch().as_u64(),
            }))
        })?;
        match content {
            Some(content) => self.send_commit(client, conversation_id, content).await.map(Some),
            None => Ok(None),
        }
    }

    /// Removes these devices' leaves from the conversation's group in one
    /// commit. Returns its seq.
    ///
    /// # Errors
    /// A device that is not a leaf, or what natterd answered
    /// (`MLS_MESSAGE_INVALID` for a member's device that is still signed in).
    pub async fn remove_devices(
        &self,
        client: &Client,
        conversation_id: &str,
        device_ids: &[&str],
    ) -> Result<u64, E2eeError> {
        self.settle(client, conversation_id).await?;
        let content = self.stage(conversation_id, |group| {
            let indices: Vec<_> = group
                .members()
                .filter(|m| leaf_identity(&m.credential).is_some_and(|(_, d)| device_ids.contains(&d.as_str())))
                .map(|m| m.index)
                .collect();
            if indices.len() != device_ids.len() {
                return Err(mls("not every device is a leaf of the group"));
            }
            self.removing(group, &indices).map(Some)
        })?;
        let content = content.ok_or_else(|| mls("nothing to remove"))?;
        self.send_commit(client, conversation_id, content).await
    }

    /// A commit removing these leaves (pending in the group).
    fn removing(
        &self,
        group: &mut MlsGroup,
        leaves: &[openmls::prelude::LeafNodeIndex],
    ) -> Result<wire::MlsCommit, E2eeError> {
        let (commit, welcome, group_info) = group.remove_members(&self.provider, &self.signer, leaves).map_err(mls)?;
        Ok(wire::MlsCommit {
            commit: bytes(&commit)?,
            welcome: welcome.as_ref().map(bytes).transpose()?.unwrap_or_default(),
            group_info: bytes(&MlsMessageOut::from(group_info.ok_or_else(|| mls("openmls made no GroupInfo"))?))?,
            epoch: group.epoch().as_u64(),
        })
    }

    /// Commits a fresh leaf key for this device (RFC 9420 section 12.1.2):
    /// post-compromise security, and what two members racing for an epoch do
    /// in the tests. Returns the commit's seq.
    ///
    /// # Errors
    /// `STALE_EPOCH` when another commit of this epoch won: [`Self::catch_up`] and retry.
    pub async fn update(&self, client: &Client, conversation_id: &str) -> Result<u64, E2eeError> {
        self.settle(client, conversation_id).await?;
        let content = self.stage(conversation_id, |group| {
            let bundle = group.self_update(&self.provider, &self.signer, LeafNodeParameters::default()).map_err(mls)?;
            let (commit, welcome, group_info) = bundle.into_contents();
            let group_info = group_info.ok_or_else(|| mls("openmls made no GroupInfo"))?;
            Ok(Some(wire::MlsCommit {
                commit: bytes(&commit)?,
                welcome: match welcome {
                    Some(w) => bytes(&MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10))?,
                    None => Vec::new(),
                },
                group_info: bytes(&MlsMessageOut::from(group_info))?,
                epoch: group.epoch().as_u64(),
            }))
        })?;
        let content = content.ok_or_else(|| mls("no commit made"))?;
        self.send_commit(client, conversation_id, content).await
    }

    /// Runs `f` holding the device state's lock (a file lock beside it) in one
    /// transaction: each change of openmls's state is read, changed and
    /// written by one party at a time, across processes too (`natter listen`
    /// and `natter send` share the device), so no key is ever used twice, and
    /// a crash leaves all of it or none. Never held across a wait on the network.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, E2eeError>) -> Result<T, E2eeError> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| mls(format!("{}: {e}", self.lock_path.display())))?;
        lock.lock().map_err(|e| mls(format!("locking {}: {e}", self.lock_path.display())))?;
        // One transaction: the change is whole or absent, and costs one fsync.
        self.local.execute_batch("BEGIN IMMEDIATE").map_err(mls)?;
        let out = f();
        let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.local.execute_batch(end).map_err(mls);
        drop(lock);
        let out = out?;
        ended?;
        Ok(out)
    }

    /// Makes a commit on the group as it is now, under the lock, and notes it
    /// as pending (`None` from `make`: nothing to commit).
    fn stage(
        &self,
        conversation_id: &str,
        make: impl FnOnce(&mut MlsGroup) -> Result<Option<wire::MlsCommit>, E2eeError>,
    ) -> Result<Option<wire::MlsCommit>, E2eeError> {
        self.locked(|| {
            let mut group = self.group(conversation_id)?;
            let content = make(&mut group)?;
            if let Some(c) = &content {
                self.note_pending(conversation_id, &c.commit)?;
            }
            Ok(content)
        })
    }

    /// Sends a staged commit; merges it once natterd accepted it, drops it
    /// when natterd refused it (the group stays in its epoch). When the
    /// answer is lost (the connection went), the commit stays pending and
    /// noted: the next [`Self::catch_up`] finds it in the conversation (then
    /// merges it) or not (then drops it), so the device never forks off.
    async fn send_commit(
        &self,
        client: &Client,
        conversation_id: &str,
        content: wire::MlsCommit,
    ) -> Result<u64, E2eeError> {
        let msg_id = uuid::Uuid::new_v4().to_string();
        let content = wire::Content { body: Some(wire::content::Body::MlsCommit(content)) };
        match client.send_content(conversation_id, &msg_id, content).await {
            Ok(sent) => self.locked(|| {
                let mut group = self.group(conversation_id)?;
                // Merged already if this device's feed brought it back first.
                if group.pending_commit().is_some() {
                    group.merge_pending_commit(&self.provider).map_err(mls)?;
                }
                self.forget_pending(conversation_id)?;
                self.processed(conversation_id, sent.seq)?;
                Ok(sent.seq)
            }),
            // natterd answered: nothing of the commit was stored.
            Err(e @ ClientError::Server { .. }) => {
                self.locked(|| self.drop_pending(conversation_id))?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn pending_commit(&self, conv: &str) -> Result<Option<Vec<u8>>, E2eeError> {
        self.local
            .query_row("SELECT commit_bytes FROM natter_pending_commit WHERE conversation_id = ?1", [conv], |r| {
                r.get(0)
            })
            .optional()
            .map_err(mls)
    }

    fn forget_pending(&self, conv: &str) -> Result<(), E2eeError> {
        self.local.execute("DELETE FROM natter_pending_commit WHERE conversation_id = ?1", [conv]).map_err(mls)?;
        Ok(())
    }

    fn note_pending(&self, conv: &str, commit: &[u8]) -> Result<(), E2eeError> {
        self.local
            .execute(
                "INSERT OR REPLACE INTO natter_pending_commit (conversation_id, commit_bytes) VALUES (?1, ?2)",
                rusqlite::params![conv, commit],
            )
            .map_err(mls)?;
        Ok(())
    }

    /// Drops this device's pending commit, which natterd did not store: the
    /// group stays in its epoch, or, for an external join (merged as it was
    /// made), the group goes.
    fn drop_pending(&self, conv: &str) -> Result<(), E2eeError> {
        let Some(pending) = self.pending_commit(conv)? else { return Ok(()) };
        self.forget_pending(conv)?;
        match self.load(conv)? {
            Some(mut group) if group.pending_commit().is_some() => {
                group.clear_pending_commit(self.provider.storage()).map_err(mls)
            }
            Some(group) if commit_epoch(&pending)? + 1 == group.epoch().as_u64() => self.forget_group(conv),
            _ => Ok(()),
        }
    }

    /// Deletes this device's state of a group natterd does not know it in
    /// (a join or a first commit that lost to another).
    fn forget_group(&self, conv: &str) -> Result<(), E2eeError> {
        if let Some(mut group) = self.load(conv)? {
            group.delete(self.provider.storage()).map_err(mls)?;
        }
        self.local.execute("DELETE FROM natter_joined WHERE conversation_id = ?1", [conv]).map_err(mls)?;
        self.forget_pending(conv)
    }

    /// Notes the epoch this device joined the group in.
    fn joined(&self, conv: &str, epoch: u64) -> Result<(), E2eeError> {
        self.local
            .execute(
                "INSERT OR REPLACE INTO natter_joined (conversation_id, epoch) VALUES (?1, ?2)",
                rusqlite::params![conv, epoch as i64],
            )
            .map_err(mls)?;
        Ok(())
    }

    fn joined_epoch(&self, conv: &str) -> Result<u64, E2eeError> {
        let epoch: Option<i64> = self
            .local
            .query_row("SELECT epoch FROM natter_joined WHERE conversation_id = ?1", [conv], |r| r.get(0))
            .optional()
            .map_err(mls)?;
        Ok(epoch.map_or(0, |e| e as u64))
    }

    /// Settles a commit whose outcome is unknown before making anything new.
    async fn settle(&self, client: &Client, conversation_id: &str) -> Result<(), E2eeError> {
        if self.pending_commit(conversation_id)?.is_some() {
            self.catch_up(client, conversation_id).await?;
        }
        Ok(())
    }

    /// Encrypts `text` for the conversation's group and sends it. Returns its seq.
    ///
    /// # Errors
    /// Not in the group, or what natterd answered.
    pub async fn send_text(&self, client: &Client, conversation_id: &str, text: &str) -> Result<u64, E2eeError> {
        self.send_payload(client, conversation_id, text_payload(text), String::new()).await
    }

    /// Encrypts a file on this device (AES-256-GCM, a fresh key), uploads the
    /// ciphertext, and sends its key, name and digest inside an MLS message.
    /// Returns the message's seq.
    ///
    /// # Errors
    /// Not in the group, the upload failed, or what natterd answered.
    pub async fn send_file(
        &self,
        client: &Client,
        conversation_id: &str,
        file: &[u8],
        file_name: &str,
        mime_type: &str,
        caption: &str,
    ) -> Result<u64, E2eeError> {
        self.settle(client, conversation_id).await?;
        let rng = ring::rand::SystemRandom::new();
        let (mut key, mut nonce) = ([0u8; 32], [0u8; 12]);
        ring::rand::SecureRandom::fill(&rng, &mut key).map_err(|_| mls("no randomness"))?;
        ring::rand::SecureRandom::fill(&rng, &mut nonce).map_err(|_| mls("no randomness"))?;
        let sealing = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).map_err(|_| mls("AES key"))?,
        );
        let mut sealed = file.to_vec();
        sealing
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut sealed,
            )
            .map_err(|_| mls("encrypting the file"))?;
        let spec = crate::transfer::UploadSpec {
            conversation_id: conversation_id.to_owned(),
            file_name: "encrypted".into(),
            size: sealed.len() as u64,
            sha256: sha256(&sealed),
            upload_id: None,
        };
        let uploaded = client
            .upload(&spec, &mut std::io::Cursor::new(sealed), |_| {})
            .await
            .map_err(|e| E2eeError::Client(e.error))?;
        let payload = wire::E2eePayload {
            body: Some(wire::e2ee_payload::Body::File(wire::EncryptedFile {
                media_id: uploaded.media_id.clone(),
                file_name: file_name.to_owned(),
                mime_type: mime_type.to_owned(),
                size: file.len() as u64,
                key: key.to_vec(),
                nonce: nonce.to_vec(),
                sha256: sha256(file).to_vec(),
                caption: caption.to_owned(),
            })),
        };
        self.send_payload(client, conversation_id, payload, uploaded.media_id).await
    }

    /// Downloads an encrypted file and decrypts it; the digest must match.
    ///
    /// # Errors
    /// The download failed, or the bytes do not decrypt to what was sent.
    pub async fn fetch_file(&self, client: &Client, file: &wire::EncryptedFile) -> Result<Vec<u8>, E2eeError> {
        let mut sealed = Vec::new();
        client.download(&file.media_id, 0, 0, &mut sealed, |_| {}).await?;
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &file.key).map_err(|_| mls("AES key"))?;
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(&file.nonce).map_err(|_| mls("the nonce"))?;
        let plain = ring::aead::LessSafeKey::new(key)
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut sealed)
            .map_err(|_| mls("the file's bytes do not decrypt: they are not what was sent"))?
            .to_vec();
        if sha256(&plain).as_slice() != file.sha256.as_slice() {
            return Err(mls("the decrypted file is not the one described"));
        }
        Ok(plain)
    }

    /// Encrypts `text` for the conversation's group as it is now, for
    /// sending by other means (`Client::send_content`): this device keeps no
    /// copy of the plaintext, so it will not show it again.
    ///
    /// # Errors
    /// Not in the group.
    pub fn seal_text(&self, conversation_id: &str, text: &str) -> Result<wire::Content, E2eeError> {
        self.seal(conversation_id, &prost::Message::encode_to_vec(&text_payload(text)), String::new())
    }

    fn seal(&self, conversation_id: &str, plaintext: &[u8], media_id: String) -> Result<wire::Content, E2eeError> {
        let message = self.locked(|| {
            let mut group = self.group(conversation_id)?;
            group.create_message(&self.provider, &self.signer, plaintext).map_err(mls)
        })?;
        Ok(wire::Content {
            body: Some(wire::content::Body::Mls(wire::MlsMessage { message: bytes(&message)?, media_id })),
        })
    }

    /// Sends a payload; when natterd answers `REMOVAL_PENDING` (someone left
    /// or was removed and nobody has committed it yet), commits the group's
    /// change first ([`Self::enter`]) and encrypts it again in the new epoch.
    async fn send_payload(
        &self,
        client: &Client,
        conversation_id: &str,
        payload: wire::E2eePayload,
        media_id: String,
    ) -> Result<u64, E2eeError> {
        self.settle(client, conversation_id).await?;
        let plaintext = prost::Message::encode_to_vec(&payload);
        let msg_id = uuid::Uuid::new_v4().to_string();
        let mut committed = false;
        let sent = loop {
            let content = self.seal(conversation_id, &plaintext, media_id.clone())?;
            match client.send_content(conversation_id, &msg_id, content).await {
                Err(ClientError::Server { code, .. }) if code == ErrorCode::REMOVAL_PENDING && !committed => {
                    committed = true;
                    let conversation = client.get_conversation(conversation_id).await?;
                    self.enter(client, &conversation).await?;
                }
                sent => break sent?,
            }
        };
        // The sender cannot decrypt its own message: it keeps the plaintext.
        self.locked(|| self.remember(conversation_id, sent.seq, &self.user_id, &plaintext))?;
        Ok(sent.seq)
    }

    /// Opens one message of an encrypted conversation, in seq order: decrypts
    /// an application message (once; afterwards its plaintext comes from the
    /// device's store), processes a commit, or joins through its Welcome.
    ///
    /// # Errors
    /// A message that does not decrypt or verify (tampered, replayed, or from
    /// an epoch this device has no keys for): the group stays as it was.
    pub fn open_message(&self, message: &wire::Message) -> Result<Opened, E2eeError> {
        self.locked(|| self.open_locked(message))
    }

    fn open_locked(&self, message: &wire::Message) -> Result<Opened, E2eeError> {
        let conv = &message.conversation_id;
        if let Some(plaintext) = self.remembered(conv, message.seq)? {
            return opened(&message.sender_user_id, &plaintext);
        }
        let opened = match message.content.as_ref().and_then(|c| c.body.as_ref()) {
            Some(wire::content::Body::Mls(m)) => self.open_application(message, &m.message)?,
            Some(wire::content::Body::MlsCommit(c)) => self.open_commit(conv, c)?,
            _ => return Err(mls("not MLS content")),
        };
        self.processed(conv, message.seq)?;
        Ok(opened)
    }

    fn open_application(&self, message: &wire::Message, ciphertext: &[u8]) -> Result<Opened, E2eeError> {
        let conv = &message.conversation_id;
        // Sent before this device joined: MLS gives it no keys for that.
        let Some(mut group) = self.load(conv)? else { return Ok(Opened::NotForMe) };
        let protocol = message_in(ciphertext)?.try_into_protocol_message().map_err(mls)?;
        if protocol.epoch().as_u64() < self.joined_epoch(conv)? {
            return Ok(Opened::NotForMe);
        }
        let processed = group.process_message(&self.provider, protocol).map_err(mls)?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let plaintext = app.into_bytes();
                let out = opened(&message.sender_user_id, &plaintext)?;
                self.remember(conv, message.seq, &message.sender_user_id, &plaintext)?;
                Ok(out)
            }
            _ => Err(mls("an MlsMessage that is not an application message")),
        }
    }

    fn open_commit(&self, conv: &str, c: &wire::MlsCommit) -> Result<Opened, E2eeError> {
        if let Some(pending) = self.pending_commit(conv)? {
            if commit_epoch(&pending)? == c.epoch {
                if pending == c.commit {
                    // This device's own commit, whose answer it never got.
                    self.forget_pending(conv)?;
                    let mut group = self.group(conv)?;
                    if group.pending_commit().is_some() {
                        group.merge_pending_commit(&self.provider).map_err(mls)?;
                    }
                    return Ok(Opened::Commit { epoch: group.epoch().as_u64() });
                }
                // Another commit won this epoch: this device's never will.
                self.drop_pending(conv)?;
            }
        }
        if let Some(group) = self.load(conv)? {
            // A group this device started alone, while another device's
            // first commit won: this one never existed for anyone else.
            if group.epoch().as_u64() == 0 && c.epoch == 0 {
                self.forget_group(conv)?;
            }
        }
        let Some(mut group) = self.load(conv)? else {
            if c.welcome.is_empty() {
                return Ok(Opened::NotForMe);
            }
            let MlsMessageBodyIn::Welcome(welcome) = message_in(&c.welcome)?.extract() else {
                return Err(mls("the welcome is not a Welcome"));
            };
            let staged = match StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None) {
                Ok(s) => s,
                // A Welcome for other devices only.
                Err(openmls::prelude::WelcomeError::NoMatchingKeyPackage) => return Ok(Opened::NotForMe),
                Err(e) => return Err(mls(e)),
            };
            let group = staged.into_group(&self.provider).map_err(mls)?;
            let epoch = group.epoch().as_u64();
            self.joined(conv, epoch)?;
            return Ok(Opened::Joined { epoch });
        };
        let epoch = group.epoch().as_u64();
        if c.epoch < epoch {
            // This device's own commit, or one it processed already.
            return Ok(Opened::Commit { epoch });
        }
        if c.epoch > epoch {
            return Err(mls(format!("a commit of epoch {} while this device is at {epoch}: it missed one", c.epoch)));
        }
        let protocol = message_in(&c.commit)?.try_into_protocol_message().map_err(mls)?;
        let processed = group.process_message(&self.provider, protocol).map_err(mls)?;
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group.merge_staged_commit(&self.provider, *staged).map_err(mls)?;
                Ok(Opened::Commit { epoch: group.epoch().as_u64() })
            }
            _ => Err(mls("an MlsCommit that is not a commit")),
        }
    }

    /// Opens what this device has not processed yet of a conversation (after
    /// `STALE_EPOCH`, or after being offline), in order, and returns what each
    /// was; what this device sent itself is skipped.
    ///
    /// # Errors
    /// What natterd answered, or a message that does not open.
    pub async fn catch_up(&self, client: &Client, conversation_id: &str) -> Result<Vec<Opened>, E2eeError> {
        let mut out = Vec::new();
        loop {
            let after = self.processed_seq(conversation_id)?;
            let page = client
                .history(wire::GetHistory {
                    conversation_id: conversation_id.into(),
                    after_seq: after,
                    limit: 100,
                    ..Default::default()
                })
                .await?;
            let encrypted: Vec<&wire::Message> = page
                .messages
                .iter()
                .filter(|m| {
                    matches!(
                        m.content.as_ref().and_then(|c| c.body.as_ref()),
                        Some(wire::content::Body::Mls(_) | wire::content::Body::MlsCommit(_))
                    )
                })
                .collect();
            for m in encrypted {
                // What this device sent itself is not news to it.
                if self.remembered(conversation_id, m.seq)?.is_some() {
                    self.processed(conversation_id, m.seq)?;
                    continue;
                }
                out.push(self.open_message(m)?);
            }
            match page.messages.last() {
                Some(last) if page.has_more => self.processed(conversation_id, last.seq)?,
                _ => {
                    // A commit sent but not in the conversation was never stored.
                    self.locked(|| self.drop_pending(conversation_id))?;
                    return Ok(out);
                }
            }
        }
    }

    fn remember(&self, conv: &str, seq: u64, sender: &str, payload: &[u8]) -> Result<(), E2eeError> {
        let stored = self
            .local
            .execute(
                "INSERT INTO natter_plaintext (conversation_id, seq, sender_user_id, payload) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
                rusqlite::params![conv, seq as i64, sender, payload],
            )
            .map_err(mls)?;
        // What this device can find later: the text, or a file's name and caption.
        let text = match opened(sender, payload)? {
            Opened::Text { text, .. } => text,
            Opened::File { file, .. } => format!("{} {}", file.file_name, file.caption),
            _ => String::new(),
        };
        if stored > 0 && !text.trim().is_empty() {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            self.local
                .execute(
                    "INSERT INTO natter_search (text, conversation_id, seq, sender_user_id, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![text, conv, seq as i64, sender, now as i64],
                )
                .map_err(mls)?;
        }
        Ok(())
    }

    /// Searches what this device decrypted or sent in encrypted conversations
    /// (its own index: natterd has none of it): every word, the last one as a
    /// prefix, accents folded; best first. `conversation` narrows it to one.
    ///
    /// # Errors
    /// The state file failed.
    pub fn search_local(
        &self,
        query: &str,
        conversation: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LocalHit>, E2eeError> {
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| format!("\"{}\"", w.replace('"', "")))
            .collect();
        let Some((last, rest)) = words.split_last() else { return Ok(Vec::new()) };
        let expression = rest.iter().cloned().chain([format!("{last}*")]).collect::<Vec<_>>().join(" ");
        let mut stmt = self
            .local
            .prepare(
                "SELECT conversation_id, seq, sender_user_id, snippet(natter_search, 0, '[', ']', '…', 12)
                 FROM natter_search WHERE natter_search MATCH ?1 AND (?2 IS NULL OR conversation_id = ?2)
                 ORDER BY rank LIMIT ?3",
            )
            .map_err(mls)?;
        let rows = stmt
            .query_map(rusqlite::params![expression, conversation, i64::from(limit)], |r| {
                Ok(LocalHit {
                    conversation_id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    sender_user_id: r.get(2)?,
                    snippet: r.get(3)?,
                })
            })
            .map_err(mls)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(mls)
    }

    fn remembered(&self, conv: &str, seq: u64) -> Result<Option<Vec<u8>>, E2eeError> {
        self.local
            .query_row(
                "SELECT payload FROM natter_plaintext WHERE conversation_id = ?1 AND seq = ?2",
                rusqlite::params![conv, seq as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(mls)
    }

    fn processed(&self, conv: &str, seq: u64) -> Result<(), E2eeError> {
        self.local
            .execute(
                "INSERT INTO natter_processed (conversation_id, seq) VALUES (?1, ?2)
                 ON CONFLICT (conversation_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                rusqlite::params![conv, seq as i64],
            )
            .map_err(mls)?;
        Ok(())
    }

    fn processed_seq(&self, conv: &str) -> Result<u64, E2eeError> {
        let seq: Option<i64> = self
            .local
            .query_row("SELECT seq FROM natter_processed WHERE conversation_id = ?1", [conv], |r| r.get(0))
            .optional()
            .map_err(mls)?;
        Ok(seq.map_or(0, |s| s as u64))
    }
}

/// The epoch a commit (an MLSMessage holding a PublicMessage) was made in.
fn commit_epoch(commit: &[u8]) -> Result<u64, E2eeError> {
    match message_in(commit)?.extract() {
        MlsMessageBodyIn::PublicMessage(m) => Ok(m.epoch().as_u64()),
        _ => Err(mls("a pending commit that is not a PublicMessage")),
    }
}

/// The `(user_id, device_id)` a leaf's BasicCredential names.
fn leaf_identity(credential: &openmls::prelude::Credential) -> Option<(String, String)> {
    let basic = openmls::prelude::BasicCredential::try_from(credential.clone()).ok()?;
    let (user, device) = natter_proto::mls::parse_credential_identity(basic.identity())?;
    Some((user.to_owned(), device.to_owned()))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What an application message's plaintext (an `E2eePayload`) is.
fn opened(sender: &str, plaintext: &[u8]) -> Result<Opened, E2eeError> {
    let payload: wire::E2eePayload =
        prost::Message::decode(plaintext).map_err(|_| mls("the plaintext is no E2eePayload"))?;
    let sender_user_id = sender.to_owned();
    match payload.body {
        Some(wire::e2ee_payload::Body::Text(text)) => Ok(Opened::Text { sender_user_id, text }),
        Some(wire::e2ee_payload::Body::File(file)) => Ok(Opened::File { sender_user_id, file }),
        None => Err(mls("an empty E2eePayload")),
    }
}

fn text_payload(text: &str) -> wire::E2eePayload {
    wire::E2eePayload { body: Some(wire::e2ee_payload::Body::Text(text.to_owned())) }
}

/// Whether an error is natterd's `STALE_EPOCH`.
pub fn is_stale_epoch(e: &E2eeError) -> bool {
    matches!(e, E2eeError::Client(ClientError::Server { code, .. }) if *code == ErrorCode::STALE_EPOCH)
}
