//! What natterd, as the delivery service, reads in a commit before it
//! accepts it: who made it, and which leaves (devices) it adds and removes,
//! so that the MLS group follows the conversation's membership.
//!
//! natterd keeps no group state of its own: each accepted commit's GroupInfo
//! (with the ratchet tree in its extension) is stored with it, and the next
//! commit is processed against a `PublicGroup` made from that GroupInfo
//! (openmls's delivery-service view: it verifies the commit's signature and
//! membership tag-free framing without any secret).

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Credential, MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, ProposalStore, PublicGroup,
    Sender,
};
use openmls_rust_crypto::{MemoryStorage, RustCrypto};

use super::FramedCommit;
use crate::domain::{DeviceId, UserId};

/// A leaf of the group: a device of a user, with its signature key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub user: UserId,
    pub device: DeviceId,
    pub signature_key: Vec<u8>,
}

/// Who made a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committer {
    /// A leaf of the group.
    Member(Leaf),
    /// A device joining by external commit (RFC 9420 section 12.4.3.2): the
    /// leaf its commit adds for itself.
    Joining(Leaf),
    /// Anyone else (an external sender): never accepted.
    Other,
}

/// What a commit does to the group's leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub committer: Committer,
    pub added: Vec<Leaf>,
    pub removed: Vec<Leaf>,
}

fn leaf(credential: &Credential, signature_key: &[u8]) -> Result<Leaf, String> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| "a leaf has no BasicCredential")?;
    let (user, device) = natter_proto::mls::parse_credential_identity(basic.identity())
        .ok_or("a leaf's identity is not <user_id>/<device_id>")?;
    Ok(Leaf {
        user: UserId::parse(user).map_err(|_| "a leaf's identity names no user")?,
        device: DeviceId(uuid::Uuid::parse_str(device).map_err(|_| "a leaf's identity names no device")?),
        signature_key: signature_key.to_vec(),
    })
}

fn group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, String> {
    match MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| format!("a GroupInfo that does not decode: {e}"))?
        .extract()
    {
        MlsMessageBodyIn::GroupInfo(info) => Ok(info),
        _ => Err("not a GroupInfo".into()),
    }
}

/// The group as its GroupInfo (with the ratchet tree and external_pub
/// extensions) describes it, checked: the signature of its signer leaf, the
/// tree against the context.
fn public_group(bytes: &[u8]) -> Result<(PublicGroup, MemoryStorage), String> {
    let info = group_info(bytes)?;
    let tree = info
        .extensions()
        .ratchet_tree()
        .ok_or("the GroupInfo carries no ratchet tree (use the ratchet_tree extension)")?
        .ratchet_tree()
        .clone();
    if info.extensions().external_pub().is_none() {
        return Err("the GroupInfo carries no external_pub extension (a new device could not join)".into());
    }
    let storage = MemoryStorage::default();
    let (group, _) = PublicGroup::from_external(&RustCrypto::default(), &storage, tree, info, ProposalStore::new())
        .map_err(|e| format!("the GroupInfo does not check out: {e}"))?;
    Ok((group, storage))
}

/// Every leaf of the group a GroupInfo describes (the first commit's: the
/// group it creates).
///
/// # Errors
/// A GroupInfo that does not decode or check out, or a leaf not named
/// `<user_id>/<device_id>`.
pub fn leaves(group_info: &[u8]) -> Result<Vec<Leaf>, String> {
    let (group, _) = public_group(group_info)?;
    group.members().map(|m| leaf(&m.credential, &m.signature_key)).collect()
}

/// What `commit` does to the group of `previous` (the GroupInfo of the
/// epoch it was made in), checking that `next` (the GroupInfo sent with it)
/// describes the group the commit makes.
///
/// # Errors
/// A commit that does not verify against that group, a `next` that is not
/// its result, or leaves not named `<user_id>/<device_id>`.
pub fn changes(previous: &[u8], commit: FramedCommit, next: &[u8]) -> Result<Changes, String> {
    let (mut group, storage) = public_group(previous)?;
    let processed = group
        .process_message(&RustCrypto::default(), commit.message)
        .map_err(|e| format!("the commit does not verify against the group: {e}"))?;
    let sender = processed.sender().clone();
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err("the commit's content is not a Commit".into());
    };
    let committer = match sender {
        Sender::Member(index) => {
            let node = group.leaf(index).ok_or("the commit's sender is no leaf of the group")?;
            Committer::Member(leaf(node.credential(), node.signature_key().as_slice())?)
        }
        Sender::NewMemberCommit => {
            let node = staged.update_path_leaf_node().ok_or("an external commit without the joiner's leaf")?;
            Committer::Joining(leaf(node.credential(), node.signature_key().as_slice())?)
        }
        _ => Committer::Other,
    };
    let mut out = Changes { committer, added: Vec::new(), removed: Vec::new() };
    for add in staged.add_proposals() {
        let node = add.add_proposal().key_package().leaf_node();
        out.added.push(leaf(node.credential(), node.signature_key().as_slice())?);
    }
    for remove in staged.remove_proposals() {
        let node =
            group.leaf(remove.remove_proposal().removed()).ok_or("the commit removes a leaf that is not there")?;
        out.removed.push(leaf(node.credential(), node.signature_key().as_slice())?);
    }
    group.merge_commit(&storage, *staged).map_err(|e| format!("the commit does not apply: {e}"))?;
    let (after, _) = public_group(next)?;
    if after.group_context() != group.group_context() {
        return Err("the group_info does not describe the group this commit makes".into());
    }
    Ok(out)
}
