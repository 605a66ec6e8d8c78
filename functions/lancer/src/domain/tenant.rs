//! Tenants: who a request acts for, and the lake folder everything it names lives in.

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
