//! End-to-end encryption requests (spec/protocol.md, "End-to-end
//! encryption"): device signature keys and KeyPackages. What natterd checks
//! of a KeyPackage and how the stock is kept is in `crate::mls`.

use std::sync::Arc;

use natter_proto::wire;
use natter_proto::ErrorCode;

use super::{invalid, Identity, Reply, Service, WireError};
use crate::domain::conversation::ConversationState;
use crate::domain::{ConversationId, DeviceId, Event, UserId};
use crate::mls::delivery::{self, Committer, Leaf};
use crate::mls::{KeyPackageStore, MlsConfig, Publication, PublishError, CLAIM_WINDOW};
use crate::projection::router::Ephemeral;
use crate::store::StreamName;

/// What the session layer needs of MLS.
pub struct MlsSetup {
    pub key_packages: Arc<dyn KeyPackageStore>,
    pub config: MlsConfig,
}

pub(super) fn stale_epoch(epoch: u64, current: u64) -> WireError {
    WireError::new(
        ErrorCode::STALE_EPOCH,
        format!(
            "the commit is for epoch {epoch}; the conversation's group is at epoch {current}: process the commits \
             since and retry"
        ),
    )
}

fn no_device_key() -> WireError {
    WireError::new(ErrorCode::NO_DEVICE_KEY, "this device has registered no MLS signature key (RegisterDeviceKey)")
}

impl Service {
    /// What natterd checks of a commit made in `epoch` before appending it
    /// (which then closes the epoch atomically): that the epoch is the
    /// group's current one, that the caller's own device made it, and that
    /// the leaves it adds are registered devices of current members and the
    /// leaves it removes are not (any more). The group's first commit is
    /// checked by the group it creates.
    ///
    /// # Errors
    /// `STALE_EPOCH`, `MLS_MESSAGE_INVALID`.
    pub(super) async fn check_commit_leaves(
        &self,
        me: &Identity,
        state: &ConversationState,
        commit: crate::mls::FramedCommit,
        group_info: &[u8],
    ) -> Result<(), WireError> {
        let epoch = commit.epoch;
        let (current, previous) = self.group_epoch(state.id).await?;
        if epoch != current {
            return Err(stale_epoch(epoch, current));
        }
        let invalid = |why: String| WireError::new(ErrorCode::MLS_MESSAGE_INVALID, why);
        let mine = |leaf: &Leaf| leaf.user == me.user_id && leaf.device == me.device_id;
        let (added, removed) = match previous.as_deref() {
            None => {
                let leaves = delivery::leaves(group_info).map_err(invalid)?;
                if !leaves.iter().any(mine) {
                    return Err(invalid("the group's first commit makes a group without the sending device".into()));
                }
                (leaves.into_iter().filter(|l| !mine(l)).collect(), Vec::new())
            }
            Some(previous) => {
                let changes = delivery::changes(previous, commit, group_info).map_err(invalid)?;
                match changes.committer {
                    Committer::Member(ref sender) if mine(sender) => (changes.added, changes.removed),
                    // A device of a member joining on its own: its leaf is
                    // checked as an added one, and it may replace an old leaf
                    // of its own (a device that lost its state, same key).
                    Committer::Joining(joiner) if mine(&joiner) => {
                        let removed = changes.removed.into_iter().filter(|l| !mine(l)).collect();
                        (vec![joiner], removed)
                    }
                    _ => return Err(invalid("a commit is made by the sending device's own leaf".into())),
                }
            }
        };
        for leaf in &added {
            let registered = self.store.device_keys(leaf.user).await?;
            let ok = state.is_member(leaf.user)
                && registered.iter().any(|k| k.device_id == leaf.device && k.signature_key == leaf.signature_key);
            if !ok {
                return Err(invalid(format!(
                    "the commit adds device {} of user {}, which is not a registered device of a member",
                    leaf.device.0, leaf.user
                )));
            }
        }
        for leaf in &removed {
            let registered = self.store.device_keys(leaf.user).await?;
            let still = state.is_member(leaf.user)
                && registered.iter().any(|k| k.device_id == leaf.device && k.signature_key == leaf.signature_key);
            if still {
                return Err(invalid(format!(
                    "the commit removes device {} of user {}, a member whose device is still signed in",
                    leaf.device.0, leaf.user
                )));
            }
        }
        Ok(())
    }

    /// What natterd checks before an application message goes into an
    /// encrypted group: that every leaf of the group's current epoch is a
    /// device of a current member. After `RemoveMember` or
    /// `LeaveConversation` the group keeps the leaves until a member commits
    /// their removal; until then nothing is accepted that they could
    /// decrypt. For groups only: a direct conversation's members never change.
    ///
    /// # Errors
    /// `REMOVAL_PENDING`, naming one of them.
    pub(super) async fn check_no_removal_pending(&self, state: &ConversationState) -> Result<(), WireError> {
        let (epoch, info) = self.group_epoch(state.id).await?;
        // No group yet: the message cannot be for one (`check_application`
        // and the members' clients refuse it).
        let Some(info) = info else { return Ok(()) };
        let cached = self.group_users.lock().expect("group users lock").get(&state.id).cloned();
        let users = match cached {
            Some((at, users)) if at == epoch => users,
            _ => {
                let leaves = delivery::leaves(&info)
                    .map_err(|why| WireError::new(ErrorCode::INTERNAL, format!("a stored GroupInfo: {why}")))?;
                let mut users: Vec<UserId> = leaves.into_iter().map(|l| l.user).collect();
                users.sort_unstable();
                users.dedup();
                let users: Arc<[UserId]> = users.into();
                let mut cache = self.group_users.lock().expect("group users lock");
                if cache.len() >= super::CACHE_MAX {
                    cache.clear();
                }
                cache.insert(state.id, (epoch, users.clone()));
                users
            }
        };
        match users.iter().find(|u| !state.is_member(**u)) {
            None => Ok(()),
            Some(gone) => Err(WireError::new(
                ErrorCode::REMOVAL_PENDING,
                format!(
                    "the group (epoch {epoch}) still holds devices of user {gone}, who is no longer a member: commit \
                     their removal, then send again"
                ),
            )),
        }
    }

    /// The latest GroupInfo of an encrypted conversation, for a member's
    /// device to join by external commit.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (the id), `NOT_FOUND`, `NOT_A_MEMBER` (a former
    /// member too), `ENCRYPTION_MISMATCH` (a plaintext conversation).
    pub(super) async fn get_group_info(&self, me: &Identity, req: wire::GetGroupInfo) -> Result<Reply, WireError> {
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        if !state.e2ee {
            return Err(WireError::from(crate::domain::Rejection::EncryptionMismatch { e2ee: false }));
        }
        let (epoch, group_info) = self.group_epoch(state.id).await?;
        Ok(Reply::GroupInfo(wire::GroupInfo {
            conversation_id: state.id.to_string(),
            epoch,
            group_info: group_info.unwrap_or_default(),
        }))
    }

    /// The group's epoch (the commits accepted) and the GroupInfo its last
    /// commit left (`None` before the first).
    async fn group_epoch(&self, conversation: ConversationId) -> Result<(u64, Option<Vec<u8>>), WireError> {
        match self.store.last_in_stream(&StreamName::mls(conversation)).await?.map(|r| (r.event, r.version)) {
            None => Ok((0, None)),
            Some((Event::MlsEpochClosed { group_info, .. }, version)) => Ok((version, Some(group_info))),
            Some(_) => Err(WireError::new(ErrorCode::INTERNAL, "an mls: stream holds another event")),
        }
    }

    pub(super) fn stock_to_wire(
        &self,
        device: DeviceId,
        remaining: u32,
        has_last_resort: bool,
    ) -> wire::KeyPackageStock {
        wire::KeyPackageStock {
            remaining,
            has_last_resort,
            low_water: self.mls.config.low_water,
            capacity: self.mls.config.stock_capacity,
            device_id: device.0.to_string(),
        }
    }

    /// The calling device's registered signature key.
    async fn device_key_of(&self, me: &Identity) -> Result<Vec<u8>, WireError> {
        let keys = self.store.device_keys(me.user_id).await?;
        keys.into_iter().find(|k| k.device_id == me.device_id).map(|k| k.signature_key).ok_or_else(no_device_key)
    }

    /// `target` is the caller or shares a current conversation with them;
    /// anyone else is `NOT_FOUND` (as if there were no such user).
    async fn visible_user(&self, me: &Identity, raw: &str) -> Result<UserId, WireError> {
        let target = UserId::parse(raw)?;
        if target != me.user_id && !self.store.share_conversation(me.user_id, target).await? {
            return Err(WireError::new(ErrorCode::NOT_FOUND, "no such user shares a conversation with you"));
        }
        Ok(target)
    }

    /// # Errors
    /// `INVALID_ARGUMENT` (key length, a proof that does not verify).
    pub(super) async fn register_device_key(
        &self,
        me: &Identity,
        req: wire::RegisterDeviceKey,
    ) -> Result<Reply, WireError> {
        crate::mls::check_device_key(&req.signature_key, &req.proof, me.user_id, me.device_id)
            .map_err(|(field, why)| invalid(field, why))?;
        let current = self.store.device_keys(me.user_id).await?;
        if current.iter().any(|k| k.device_id == me.device_id && k.signature_key == req.signature_key) {
            return Ok(Reply::DeviceKey(wire::DeviceKeyOk { changed: false }));
        }
        let event = Event::DeviceKeyRegistered {
            user_id: me.user_id,
            device_id: me.device_id,
            signature_key: req.signature_key,
            at: self.now(),
        };
        self.append_to_user(me.user_id, vec![event]).await?;
        Ok(Reply::DeviceKey(wire::DeviceKeyOk { changed: true }))
    }

    /// # Errors
    /// `INVALID_ARGUMENT` (the id), `NOT_FOUND` (no such user shares a
    /// conversation with the caller).
    pub(super) async fn list_device_keys(&self, me: &Identity, req: wire::ListDeviceKeys) -> Result<Reply, WireError> {
        let user = self.visible_user(me, &req.user_id).await?;
        let devices = self
            .store
            .device_keys(user)
            .await?
            .into_iter()
            .map(|k| wire::DeviceKey {
                device_id: k.device_id.0.to_string(),
                signature_key: k.signature_key,
                registered_at_ms: k.registered_at.0,
            })
            .collect();
        Ok(Reply::DeviceKeys(wire::DeviceKeyList { user_id: user.to_string(), devices }))
    }

    /// # Errors
    /// `NO_DEVICE_KEY`, `INVALID_ARGUMENT` (nothing to publish),
    /// `KEY_PACKAGE_INVALID` (naming the package), `KEY_PACKAGES_FULL`.
    pub(super) async fn publish_key_packages(
        &self,
        me: &Identity,
        req: wire::PublishKeyPackages,
    ) -> Result<Reply, WireError> {
        let config = &self.mls.config;
        if req.key_packages.is_empty() && req.last_resort.is_empty() {
            return Err(invalid("key_packages", "is empty and so is last_resort: nothing to publish"));
        }
        if req.key_packages.len() > config.stock_capacity as usize {
            return Err(WireError::new(
                ErrorCode::KEY_PACKAGES_FULL,
                format!(
                    "{} KeyPackages at once; a device's stock holds {}",
                    req.key_packages.len(),
                    config.stock_capacity
                ),
            ));
        }
        let key = self.device_key_of(me).await?;
        let now = self.now();
        let check = |bytes: &[u8], last_resort: bool| {
            crate::mls::check(bytes, me.user_id, me.device_id, &key, last_resort, now, config)
        };
        let mut packages = Vec::with_capacity(req.key_packages.len());
        for (i, bytes) in req.key_packages.iter().enumerate() {
            packages.push(
                check(bytes, false).map_err(|why| {
                    WireError::new(ErrorCode::KEY_PACKAGE_INVALID, format!("key_packages[{i}] {why}"))
                })?,
            );
        }
        let last_resort = if req.last_resort.is_empty() {
            None
        } else {
            Some(
                check(&req.last_resort, true)
                    .map_err(|why| WireError::new(ErrorCode::KEY_PACKAGE_INVALID, format!("last_resort {why}")))?,
            )
        };
        let stock = self
            .mls
            .key_packages
            .publish(
                Publication { user: me.user_id, device: me.device_id, signature_key: key, packages, last_resort },
                config.stock_capacity,
                now,
            )
            .await
            .map_err(|e| match e {
                PublishError::Full { .. } => WireError::new(ErrorCode::KEY_PACKAGES_FULL, e.to_string()),
                PublishError::Store(e) => e.into(),
            })?;
        Ok(Reply::KeyPackageStock(self.stock_to_wire(me.device_id, stock.remaining, stock.has_last_resort)))
    }

    /// # Errors
    /// `NO_DEVICE_KEY`.
    pub(super) async fn key_package_stock(&self, me: &Identity) -> Result<Reply, WireError> {
        let key = self.device_key_of(me).await?;
        let stock = self.mls.key_packages.stock(me.device_id, &key, self.now()).await?;
        Ok(Reply::KeyPackageStock(self.stock_to_wire(me.device_id, stock.remaining, stock.has_last_resort)))
    }

    /// # Errors
    /// `INVALID_ARGUMENT` (the id), `NOT_FOUND` (as [`Self::list_device_keys`]),
    /// `RATE_LIMITED` (per caller, per target).
    pub(super) async fn claim_key_packages(
        &self,
        me: &Identity,
        req: wire::ClaimKeyPackages,
    ) -> Result<Reply, WireError> {
        let target = self.visible_user(me, &req.user_id).await?;
        let config = &self.mls.config;
        self.limit(
            format!("mls_claims_by:{}", me.user_id),
            CLAIM_WINDOW,
            config.claims_per_caller_per_hour,
            "too many KeyPackage claims from this account",
        )
        .await?;
        self.limit(
            format!("mls_claims_of:{target}"),
            CLAIM_WINDOW,
            config.claims_per_target_per_hour,
            "too many KeyPackage claims of this user",
        )
        .await?;
        let now = self.now();
        let mut packages = Vec::new();
        let mut exhausted = Vec::new();
        for device in self.store.device_keys(target).await? {
            if device.device_id == me.device_id {
                continue;
            }
            match self.mls.key_packages.claim(device.device_id, &device.signature_key, now).await? {
                Some(claimed) => {
                    if claimed.last_resort || claimed.stock.remaining < config.low_water {
                        let signal = Ephemeral::KeyPackageStock {
                            device: device.device_id,
                            remaining: claimed.stock.remaining,
                            has_last_resort: claimed.stock.has_last_resort,
                        };
                        self.router.signal(&[target], signal);
                    }
                    packages.push(wire::ClaimedKeyPackage {
                        device_id: device.device_id.0.to_string(),
                        key_package: claimed.bytes,
                        last_resort: claimed.last_resort,
                    });
                }
                None => {
                    let signal =
                        Ephemeral::KeyPackageStock { device: device.device_id, remaining: 0, has_last_resort: false };
                    self.router.signal(&[target], signal);
                    exhausted.push(device.device_id.0.to_string());
                }
            }
        }
        Ok(Reply::ClaimedKeyPackages(wire::ClaimedKeyPackages {
            user_id: target.to_string(),
            packages,
            exhausted_device_ids: exhausted,
        }))
    }
}
