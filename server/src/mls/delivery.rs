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

use crate::domain::{DeviceId, UserId};

/// A leaf of the group: a device of a user, with its signature key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub user: UserId,
    pub device: DeviceId,
    pub signature_key: Vec<u8>,
}

/// What a commit does to the group's leaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// The committer (`None` for a commit by a new member: not accepted).
    pub sender: Option<Leaf>,
    pub added: Vec<Leaf>,
    pub removed: Vec<Leaf>,
}

fn leaf(credential: &Credential, signature_key: &[u8]) -> Result<Leaf, String> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| "a leaf has no BasicCredential")?;
    let identity = std::str::from_utf8(basic.identity()).map_err(|_| "a leaf's identity is not UTF-8")?;
    let (user, device) = identity.split_once('/').ok_or("a leaf's identity is not <user_id>/<device_id>")?;
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

/// The group as its GroupInfo (with the ratchet tree extension) describes it,
/// checked: the signature of its signer leaf, the tree against the context.
fn public_group(bytes: &[u8]) -> Result<(PublicGroup, MemoryStorage), String> {
    let info = group_info(bytes)?;
    let tree = info
        .extensions()
        .ratchet_tree()
        .ok_or("the GroupInfo carries no ratchet tree (use the ratchet_tree extension)")?
        .ratchet_tree()
        .clone();
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
pub fn changes(previous: &[u8], commit: &[u8], next: &[u8]) -> Result<Changes, String> {
    let (mut group, storage) = public_group(previous)?;
    let message = MlsMessageIn::tls_deserialize_exact(commit)
        .map_err(|e| format!("the commit does not decode: {e}"))?
        .try_into_protocol_message()
        .map_err(|e| format!("the commit is not a protocol message: {e}"))?;
    let processed = group
        .process_message(&RustCrypto::default(), message)
        .map_err(|e| format!("the commit does not verify against the group: {e}"))?;
    let sender = match processed.sender() {
        Sender::Member(index) => {
            let node = group.leaf(*index).ok_or("the commit's sender is no leaf of the group")?;
            Some(leaf(node.credential(), node.signature_key().as_slice())?)
        }
        _ => None,
    };
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err("the commit's content is not a Commit".into());
    };
    let mut out = Changes { sender, ..Changes::default() };
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
