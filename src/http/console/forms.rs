//! The key form: what the grid, the key type and the lifecycle fields say,
//! read from a posted form or a key, and turned into the Manager's requests.

use std::collections::BTreeMap;

use maud::Markup;

use super::pages::{self, Grid, KeyFields};
use super::{Console, Signed};
use crate::credits::{Credits, Refill};
use crate::http::error::ApiError;
use crate::manage::{KeyChange, KeyTerms, KeyView, NewKey};
use crate::ratelimit::RateLimit;
use crate::scope::Access;

/// The first value of `name` in a form.
pub fn value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.as_str())
}

/// (resource, level) pairs of a key.
type Grants = Vec<(String, Access)>;

#[derive(Default)]
pub struct KeyForm {
    name: String,
    billing: bool,
    levels: BTreeMap<String, Access>,
    scopes: Vec<String>,
    expires: String,
    cidrs: String,
    metadata: String,
    limits: String,
    credits: String,
    refill: String,
    /// Role ids chosen.
    roles: Vec<String>,
}

/// The account's roles a form offers: (id, name).
pub type Offered = [(String, String)];

impl KeyForm {
    pub fn read(form: &[(String, String)]) -> KeyForm {
        let mut key = KeyForm {
            name: value(form, "name").unwrap_or("").trim().to_owned(),
            billing: value(form, "kind") == Some("billing"),
            expires: value(form, "expires").unwrap_or("").trim().to_owned(),
            cidrs: value(form, "cidrs").unwrap_or("").to_owned(),
            metadata: value(form, "metadata").unwrap_or("").to_owned(),
            limits: value(form, "limits").unwrap_or("").to_owned(),
            credits: value(form, "credits").unwrap_or("").trim().to_owned(),
            refill: value(form, "refill").unwrap_or("").trim().to_owned(),
            ..KeyForm::default()
        };
        for (field, chosen) in form {
            if let Some(resource) = field.strip_prefix("access.") {
                let level = match chosen.as_str() {
                    "read" => Access::Read,
                    "write" => Access::Write,
                    "full" => Access::Full,
                    _ => Access::NoAccess,
                };
                key.levels.insert(resource.to_owned(), level);
            } else if field == "scope" {
                key.scopes.push(chosen.clone());
            } else if field == "role" {
                key.roles.push(chosen.clone());
            }
        }
        key
    }

    /// The form of a key as it is: its own grants (never its roles').
    pub fn from_view(view: &KeyView) -> KeyForm {
        let levels: BTreeMap<String, Access> = view
            .own_access
            .iter()
            .filter(|(_, access)| !matches!(access, Access::Custom))
            .cloned()
            .collect();
        // Scopes of a resource whose level is Custom show as single scopes.
        let custom: Vec<&String> = view
            .own_access
            .iter()
            .filter(|(_, access)| matches!(access, Access::Custom))
            .map(|(resource, _)| resource)
            .collect();
        KeyForm {
            name: view.name.clone(),
            billing: matches!(view.kind, crate::scope::KeyKind::Billing),
            levels,
            roles: view.roles.iter().map(|role| role.role_id.clone()).collect(),
            scopes: view
                .own_scopes
                .iter()
                .filter(|scope| {
                    custom
                        .iter()
                        .any(|resource| scope.starts_with(&format!("{resource}.")))
                })
                .cloned()
                .collect(),
            expires: pages::date(view.expire_time_unix_ms),
            cidrs: view.allowed_cidrs.join("\n"),
            metadata: view
                .metadata
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join("\n"),
            limits: view
                .rate_limits
                .iter()
                .map(RateLimit::line)
                .collect::<Vec<_>>()
                .join("\n"),
            credits: view
                .credits
                .map_or_else(String::new, |credits| credits.remaining.to_string()),
            refill: view
                .credits
                .and_then(|credits| credits.refill)
                .map_or_else(String::new, |refill| refill.text()),
        }
    }

    /// The grants of the chosen key type (the other type's rows are
    /// ignored: a billing key holds billing scopes only).
    fn grants(&self, console: &Console, signed: &Signed) -> Vec<(String, Access)> {
        let view = console.api.manager.scopes(&signed.caller);
        view.resources
            .iter()
            .filter(|resource| resource.exclusive == self.billing)
            .filter_map(|resource| {
                let level = *self.levels.get(&resource.resource)?;
                (level != Access::NoAccess).then(|| (resource.resource.clone(), level))
            })
            .collect()
    }

    fn terms(&self) -> Result<KeyTerms, ApiError> {
        Ok(KeyTerms {
            credits: self.credits()?,
            expire_time: self.expire_time()?,
            not_before: None,
            allowed_cidrs: self.cidr_list(),
            metadata: self.metadata_map()?,
            rate_limits: self.rate_limits()?,
        })
    }

    fn expire_time(&self) -> Result<Option<i64>, ApiError> {
        if self.expires.is_empty() {
            return Ok(None);
        }
        pages::parse_date(&self.expires)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(Some("expire_time"), "is not a date (YYYY-MM-DD)"))
    }

    fn cidr_list(&self) -> Vec<String> {
        self.cidrs
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn metadata_map(&self) -> Result<BTreeMap<String, String>, ApiError> {
        self.metadata
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| {
                line.split_once('=')
                    .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            Some("metadata"),
                            format!("`{line}` is not KEY=VALUE"),
                        )
                    })
            })
            .collect()
    }

    /// The credits the form gives (`None`: unlimited).
    fn credits(&self) -> Result<Option<Credits>, ApiError> {
        if self.credits.is_empty() {
            if !self.refill.is_empty() {
                return Err(ApiError::bad_request(
                    Some("credits"),
                    "a refill needs credits",
                ));
            }
            return Ok(None);
        }
        let remaining = self.credits.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                Some("credits"),
                format!("`{}` is not a whole number", self.credits),
            )
        })?;
        let refill = match self.refill.as_str() {
            "" => None,
            text => Some(
                Refill::parse(text)
                    .map_err(|reason| ApiError::bad_request(Some("credits.refill"), reason))?,
            ),
        };
        Credits::new(remaining, refill)
            .map(Some)
            .map_err(|error| ApiError::bad_request(Some("credits"), error.to_string()))
    }

    fn rate_limits(&self) -> Result<Vec<RateLimit>, ApiError> {
        self.limits
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| {
                RateLimit::parse_line(line).map_err(|reason| {
                    ApiError::bad_request(Some("rate_limits"), format!("`{line}`: {reason}"))
                })
            })
            .collect()
    }

    fn scopes_of_kind(&self, console: &Console, signed: &Signed) -> Vec<String> {
        let view = console.api.manager.scopes(&signed.caller);
        self.scopes
            .iter()
            .filter(|scope| {
                view.resources.iter().any(|resource| {
                    resource.exclusive == self.billing && resource.scopes.contains(scope)
                })
            })
            .cloned()
            .collect()
    }

    /// The grants and single scopes of the chosen key type (read from one
    /// view of the catalog); at least one of them.
    fn chosen(
        &self,
        console: &Console,
        signed: &Signed,
    ) -> Result<(Grants, Vec<String>), ApiError> {
        let (grants, scopes) = (
            self.grants(console, signed),
            self.scopes_of_kind(console, signed),
        );
        if grants.is_empty() && scopes.is_empty() && self.roles.is_empty() {
            return Err(ApiError::bad_request(
                Some("grants"),
                "choose at least one access level, scope or role",
            ));
        }
        Ok((grants, scopes))
    }

    pub fn new_key(
        &self,
        console: &Console,
        signed: &Signed,
        account: &str,
    ) -> Result<NewKey, ApiError> {
        let (grants, scopes) = self.chosen(console, signed)?;
        if account.is_empty() {
            return Err(ApiError::bad_request(
                Some("account_id"),
                "choose the account on the keys page first",
            ));
        }
        Ok(NewKey {
            account_id: account.to_owned(),
            name: self.name.clone(),
            scopes,
            grants,
            terms: self.terms()?,
            all_my_scopes_except_billing: false,
            request_id: String::new(),
            roles: self.roles.clone(),
        })
    }

    /// The change to `current`; its limits only if the form changed them
    /// (so an edit by a caller with limits of its own does not re-check
    /// limits it left alone).
    pub fn change(
        &self,
        console: &Console,
        signed: &Signed,
        current: &KeyView,
    ) -> Result<KeyChange, ApiError> {
        let (grants, scopes) = self.chosen(console, signed)?;
        let limits = self.rate_limits()?;
        let credits = self.credits()?;
        Ok(KeyChange {
            key_id: current.key_id.clone(),
            rate_limits: (limits != current.rate_limits).then_some(limits),
            credits: (credits != current.credits).then_some(credits),
            name: Some(self.name.clone()),
            scopes,
            grants,
            expire_time: Some(self.expire_time()?),
            allowed_cidrs: Some(self.cidr_list()),
            metadata: Some(self.metadata_map()?),
            roles: {
                let current: Vec<&String> =
                    current.roles.iter().map(|role| &role.role_id).collect();
                (self.roles.iter().collect::<Vec<_>>() != current).then(|| self.roles.clone())
            },
            ..KeyChange::default()
        })
    }

    fn fields<'a>(&'a self, error: Option<&'a ApiError>, offered: &'a Offered) -> KeyFields<'a> {
        KeyFields {
            roles: offered
                .iter()
                .map(|(id, name)| (id.as_str(), name.as_str(), self.roles.contains(id)))
                .collect(),
            name: &self.name,
            expires: &self.expires,
            cidrs: &self.cidrs,
            metadata: &self.metadata,
            limits: &self.limits,
            credits: &self.credits,
            refill: &self.refill,
            error: error
                .map(|error| (error.field.as_deref().unwrap_or(""), error.message.as_str())),
        }
    }
}

fn with_grid<T>(
    console: &Console,
    signed: &Signed,
    form: &KeyForm,
    draw: impl FnOnce(&Grid<'_>) -> T,
) -> T {
    let view = console.api.manager.scopes(&signed.caller);
    let levels = |resource: &str| {
        form.levels
            .get(resource)
            .copied()
            .unwrap_or(Access::NoAccess)
    };
    let grid = Grid {
        resources: &view.resources,
        caller_is_admin: view.caller_is_admin,
        caller_scopes: &view.caller_scopes,
        billing: form.billing,
        levels: &levels,
        chosen_scopes: &form.scopes,
    };
    draw(&grid)
}

pub fn create_page(
    console: &Console,
    signed: &Signed,
    account: &str,
    form: &KeyForm,
    (error, offered): (Option<&ApiError>, &Offered),
) -> Markup {
    let title = if account.is_empty() {
        "Create API key".to_owned()
    } else {
        format!("Create API key in {account}")
    };
    let body = with_grid(console, signed, form, |grid| {
        pages::key_form(
            "/console/keys",
            "Create & View",
            &signed.csrf,
            Some(account),
            &form.fields(error, offered),
            grid,
        )
    });
    pages::page(&title, Some(&signed.frame()), body)
}

pub fn edit_form(
    console: &Console,
    signed: &Signed,
    view: &KeyView,
    form: &KeyForm,
    (error, offered): (Option<&ApiError>, &Offered),
) -> Markup {
    with_grid(console, signed, form, |grid| {
        pages::key_form(
            &format!("/console/keys/{}", view.key_id),
            "Save",
            &signed.csrf,
            None,
            &form.fields(error, offered),
            grid,
        )
    })
}
