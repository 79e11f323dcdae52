//! CreateKey, and its safe retry by request id ([`crate::request_id`]).

use super::audit::audit_event;
use super::error::{invalid, ManageError};
use super::roles::check_attached;
use super::rules::{
    caller_reads, check_credits_given, check_no_escalation, check_rate_limits, check_terms_within,
    current_caller, require,
};
use super::types::{Caller, KeyView, NewKey};
use super::validate::{
    validate_account_id, validate_cidrs, validate_metadata, validate_name, validate_rate_limits,
};
use super::{count_key, record_mutation, Manager};
use crate::authz::now_unix_ms;
use crate::request_id::{request_digest, RequestId};
use crate::scope::{ManageAction, ScopeSet};
use crate::store::{
    Change, CreateRequest, CreateRequestRecord, CreditsRecord, KeyRecord, Reads, StoreError,
};
use crate::token::KeyId;

impl Manager {
    pub async fn create(
        &self,
        caller: &Caller,
        request: NewKey,
    ) -> Result<(KeyView, String), ManageError> {
        let result = self.create_key(caller, request).await;
        record_mutation("create", &result);
        if let Ok((view, _)) = &result {
            count_key(view.kind, 1.0);
        }
        result
    }

    async fn create_key(
        &self,
        caller: &Caller,
        request: NewKey,
    ) -> Result<(KeyView, String), ManageError> {
        self.require(caller, ManageAction::Create)?;
        self.admit_mutation(caller)?;
        let account_id = target_account(caller, &request.account_id)?;
        let retry = retry_of(caller, &request, &account_id)?;
        if let Some(first) = self.first_result_of(&retry).await? {
            return Ok(first);
        }
        let name = validate_name(&request.name)?;
        let role_ids = self.role_ids(&account_id, &request.roles)?;
        let scopes = self.requested_scopes(
            caller,
            &request.scopes,
            &request.grants,
            request.all_my_scopes_except_billing,
            !role_ids.is_empty(),
        )?;
        let issued = self.format.issue();
        let now = now_unix_ms();
        let terms = &request.terms;
        let (not_before, expire) = self.validity(
            now,
            terms.not_before.unwrap_or(0),
            terms.expire_time.unwrap_or(0),
        )?;
        let record = KeyRecord {
            version: 0,
            key_id: issued.key_id.as_bytes().to_vec(),
            account_id: account_id.clone(),
            name,
            scopes: self.catalog.load().names(&scopes),
            secret_hash: issued.secret_hash.to_vec(),
            create_time_unix_ms: now,
            update_time_unix_ms: now,
            created_by: caller.to_string(),
            expire_time_unix_ms: expire,
            not_before_unix_ms: not_before,
            allowed_cidrs: validate_cidrs(&terms.allowed_cidrs)?,
            metadata: validate_metadata(&terms.metadata)?,
            rate_limits: validate_rate_limits(&terms.rate_limits, &self.catalog.load())?,
            credits: terms.credits.map(|credits| CreditsRecord::new(&credits, 1)),
            role_ids: role_ids.iter().map(|id| id.as_bytes().to_vec()).collect(),
            ..KeyRecord::default()
        };
        let record = record.versioned();
        let view = self.view(&record)?;
        let filed = retry.as_ref().map(|(id, digest)| CreateRequest {
            lookup: *id.lookup(),
            record: CreateRequestRecord {
                key_id: record.key_id.clone(),
                sealed_token: id.seal(&issued.token),
                request_digest: digest.to_vec(),
                time_unix_ms: now,
            },
        });
        let caller_left = self.caller_credits_left(caller).await?;
        let committed = self
            .commit_create(caller, record, (scopes, caller_left), filed)
            .await;
        if let Some(first) = self.settle(committed, &retry, &account_id).await? {
            return Ok(first);
        }
        tracing::info!(%caller, key_id = %issued.key_id, account_id = %account_id, scopes = ?view.scopes, "key created");
        Ok((view, issued.token))
    }

    /// What a create's filing came to: done (`None`), a concurrent retry
    /// with the same request id that won (its result), or a refusal.
    async fn settle(
        &self,
        committed: Result<(), ManageError>,
        retry: &Option<(RequestId, [u8; 32])>,
        account_id: &str,
    ) -> Result<Option<(KeyView, String)>, ManageError> {
        match committed {
            Ok(()) => Ok(None),
            Err(ManageError::Store(StoreError::DuplicateRequest)) => {
                match self.first_result_of(retry).await? {
                    Some(first) => Ok(Some(first)),
                    None => Err(ManageError::Store(StoreError::Conflict)),
                }
            }
            Err(ManageError::Store(StoreError::AccountFull { cap })) => {
                Err(ManageError::AccountFull {
                    account: account_id.to_owned(),
                    cap,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// Files the new key, checking the caller's rights again on the state
    /// the change applies to.
    async fn commit_create(
        &self,
        caller: &Caller,
        record: KeyRecord,
        (scopes, caller_left): (ScopeSet, Option<u64>),
        request: Option<CreateRequest>,
    ) -> Result<(), ManageError> {
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let cap = self.max_keys_per_account;
        let reads = Reads {
            keys: caller_reads(caller, None),
            roles: record.roles().collect(),
            members: false,
        };
        self.store
            .mutate(reads, move |snapshot| {
                let caller = current_caller(snapshot, &catalog, &guard)?;
                require(&catalog, &caller, ManageAction::Create)?;
                check_no_escalation(&catalog, &caller, &scopes)?;
                if !record.role_ids.is_empty() {
                    check_attached(snapshot, &catalog, &caller, &record)?;
                }
                check_rate_limits(snapshot, &caller, &record.rate_limits)?;
                check_credits_given(snapshot, &caller, record.credits.as_ref(), caller_left)?;
                check_terms_within(snapshot, &caller, &record).map_err(|why| {
                    ManageError::TermsEscalation(format!("a key made by an API key needs {why}"))
                })?;
                let event = audit_event("create", &caller, None, Some(&record));
                let change = Change::Create {
                    record: record.clone(),
                    cap,
                    request: request.clone(),
                };
                Ok::<_, ManageError>((change, event, ()))
            })
            .await
    }

    async fn first_result_of(
        &self,
        retry: &Option<(RequestId, [u8; 32])>,
    ) -> Result<Option<(KeyView, String)>, ManageError> {
        match retry {
            Some((id, digest)) => self.first_result(id, digest).await,
            None => Ok(None),
        }
    }

    /// The first result of a create made with this request id, if it was
    /// made within the retry window; a reuse for another request is refused.
    async fn first_result(
        &self,
        id: &RequestId,
        digest: &[u8; 32],
    ) -> Result<Option<(KeyView, String)>, ManageError> {
        let Some(first) = self.store.create_request(id.lookup()).await? else {
            return Ok(None);
        };
        if now_unix_ms() - first.time_unix_ms > crate::request_id::RETENTION_MS {
            return Ok(None);
        }
        if first.request_digest != digest {
            return Err(invalid(
                "request_id",
                "was used for a different CreateKey within the last 24 h: use a new request_id for a new key",
            ));
        }
        let token = id
            .open(&first.sealed_token)
            .ok_or_else(|| StoreError::Corrupt {
                key_id: "create request".into(),
                reason: "the sealed token does not open".into(),
            })?;
        let key_id = <[u8; 16]>::try_from(first.key_id.as_slice())
            .map(KeyId::from_bytes)
            .map_err(|_| StoreError::Corrupt {
                key_id: "create request".into(),
                reason: "key id is not 16 bytes".into(),
            })?;
        let record = self.store.get(&key_id)?.ok_or_else(|| {
            ManageError::NotFound(format!(
                "{key_id} (created by this request_id, deleted since)"
            ))
        })?;
        tracing::info!(%key_id, "CreateKey retried with its request id: the first result");
        Ok(Some((self.view(&record)?, token)))
    }
}

/// The account a new key goes to: the admin names it; a key creates in its
/// own account only.
/// A request id's lookup and the request's digest, when it has one. The
/// digest binds the caller: the same id and body from another caller of
/// the account is refused as a reuse (and learns nothing of the first key),
/// never answered with the first caller's key and token.
fn retry_of(
    caller: &Caller,
    request: &NewKey,
    account_id: &str,
) -> Result<Option<(RequestId, [u8; 32])>, ManageError> {
    match request.request_id.as_str() {
        "" => Ok(None),
        text => Ok(Some((
            RequestId::new(account_id, text).map_err(|message| invalid("request_id", message))?,
            create_digest(caller, request),
        ))),
    }
}

fn target_account(caller: &Caller, requested: &str) -> Result<String, ManageError> {
    match caller {
        Caller::Admin => validate_account_id(requested),
        Caller::Key { account_id, .. } => {
            if !requested.is_empty() && requested != &**account_id {
                return Err(ManageError::OtherAccount);
            }
            Ok(account_id.to_string())
        }
    }
}

/// What a CreateKey asked for and who asked, as sent (a retry sends the
/// same, with the same credential).
pub(super) fn create_digest(caller: &Caller, request: &NewKey) -> [u8; 32] {
    let mut parts: Vec<Vec<u8>> = vec![
        caller.to_string().into_bytes(),
        request.account_id.clone().into_bytes(),
        request.name.clone().into_bytes(),
        vec![u8::from(request.all_my_scopes_except_billing)],
        format!("{:?}", request.terms.expire_time).into_bytes(),
        format!("{:?}", request.terms.not_before).into_bytes(),
    ];
    parts.extend(
        request
            .scopes
            .iter()
            .map(|scope| scope.clone().into_bytes()),
    );
    parts.push(b"|grants".to_vec());
    parts.extend(
        request
            .grants
            .iter()
            .map(|(resource, access)| format!("{resource}={access:?}").into_bytes()),
    );
    parts.push(b"|cidrs".to_vec());
    parts.extend(
        request
            .terms
            .allowed_cidrs
            .iter()
            .map(|c| c.clone().into_bytes()),
    );
    parts.push(b"|metadata".to_vec());
    parts.extend(
        request
            .terms
            .metadata
            .iter()
            .map(|(key, value)| format!("{key}={value}").into_bytes()),
    );
    parts.push(format!("|credits{:?}", request.terms.credits).into_bytes());
    parts.push(format!("|roles{:?}", request.roles).into_bytes());
    parts.push(b"|rate_limits".to_vec());
    parts.extend(
        request
            .terms
            .rate_limits
            .iter()
            .map(|limit| format!("{limit}{}", u8::from(limit.account)).into_bytes()),
    );
    request_digest(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
}
