//! Tenants: who a request acts for, and the lake folder everything it names lives in.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::path::LakePath;

/// The tenant of open single-tenant mode.
pub const DEFAULT_TENANT: &str = "default";

super::path::name_type!(
    /// A tenant's name: a `Name`, so it can be the tenant's lake folder.
    TenantName,
    "tenant"
);

/// The caller, as authentication established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Who the tenant is: `default` in single-tenant mode, else the one its API key belongs to.
    pub name: TenantName,
    /// The tenant's folder in the lake: `tenants/<name>` with API keys, else the root.
    pub root: LakePath,
}

impl Tenant {
    /// The one tenant of single-tenant mode, which owns the whole lake.
    pub fn single() -> Self {
        Self {
            name: TenantName::parse(DEFAULT_TENANT).expect("the default tenant is a name"),
            root: LakePath::root(),
        }
    }

    /// A tenant of a multi-tenant lake, kept under `tenants/<name>`.
    pub fn keyed(name: TenantName) -> Self {
        let tenants = LakePath::parse("tenants", "tenants").expect("a valid folder");
        Self {
            root: tenants.child(name.as_name()),
            name,
        }
    }

    /// A path the tenant gave, inside its folder.
    pub fn path(&self, relative: &LakePath) -> LakePath {
        self.root.join(relative)
    }

    /// Splits a lake key into the tenant whose folder holds it and the key inside that
    /// folder: `tenants/<name>/rest` belongs to `<name>`, anything else to the single tenant.
    pub fn of_key(key: &LakePath) -> (Self, LakePath) {
        let mut segments = key.segments();
        if let (Some("tenants"), Some(name)) = (segments.next(), segments.next())
            && let Ok(name) = TenantName::parse(name)
        {
            let tenant = Self::keyed(name);
            let rest = key.strip_prefix(&tenant.root).unwrap_or_default();
            return (tenant, rest);
        }
        (Self::single(), key.clone())
    }
}

/// Why a set of API keys was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct KeysError(String);

/// API key -> tenant. Keys are held as SHA-256 digests: a lookup hashes the presented key
/// first, so its timing tells nothing about how much of a real key was guessed, and the
/// keys themselves never sit in memory or in debug output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiKeys(HashMap<[u8; 32], TenantName>);

fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Whether some key belongs to `tenant`.
    pub fn has_tenant(&self, tenant: &TenantName) -> bool {
        self.0.values().any(|name| name == tenant)
    }

    /// Parses `key=tenant` entries separated by commas or newlines; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, KeysError> {
        let mut keys = HashMap::new();
        for entry in text
            .split([',', '\n'])
            .map(|e| e.split('#').next().unwrap_or("").trim())
        {
            if entry.is_empty() {
                continue;
            }
            let (key, tenant) = entry
                .split_once('=')
                .ok_or_else(|| KeysError("API keys are written key=tenant".into()))?;
            let (key, tenant) = (key.trim(), tenant.trim());
            if key.len() < 8 {
                return Err(KeysError("an API key must be at least 8 characters".into()));
            }
            // Records of the keyless single tenant carry this name: a keyed tenant of the
            // same name would inherit them.
            if tenant == DEFAULT_TENANT {
                return Err(KeysError(format!(
                    "the tenant name '{tenant}' is reserved for the server without keys; choose another"
                )));
            }
            keys.insert(
                key_digest(key),
                TenantName::parse(tenant).map_err(|err| KeysError(err.to_string()))?,
            );
        }
        if keys.is_empty() {
            return Err(KeysError(
                "API keys are configured but none was given".into(),
            ));
        }
        Ok(Self(keys))
    }

    /// The tenant a presented key belongs to, or `None` for an unknown key.
    pub fn tenant_of(&self, key: &str) -> Option<&TenantName> {
        self.0.get(&key_digest(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> LakePath {
        LakePath::parse("p", text).expect(text)
    }

    #[test]
    fn keyed_tenants_live_in_their_own_folder() {
        let acme = Tenant::keyed(TenantName::parse("acme").expect("name"));
        assert_eq!(
            acme.path(&path("raw/a.csv")).as_str(),
            "tenants/acme/raw/a.csv"
        );
        assert_eq!(
            Tenant::single().path(&path("raw/a.csv")).as_str(),
            "raw/a.csv"
        );
    }

    #[test]
    fn lake_keys_are_split_into_tenant_and_rest() {
        let (tenant, rest) = Tenant::of_key(&path("tenants/acme/raw/a.csv"));
        assert_eq!((tenant.name.as_str(), rest.as_str()), ("acme", "raw/a.csv"));
        let (tenant, rest) = Tenant::of_key(&path("raw/a.csv"));
        assert_eq!(
            (tenant.name.as_str(), rest.as_str()),
            ("default", "raw/a.csv")
        );
    }
}
