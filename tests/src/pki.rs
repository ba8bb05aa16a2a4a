//! Test PKI made with rcgen: CAs and leaves, each with a subject of its own (OpenSSL takes a leaf
//! whose subject equals its issuer's for self-signed, and rcgen's default subject is the same for
//! every certificate).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA that issues test leaves.
pub struct TestCa {
    /// Its certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a leaf should look like; start from [`Leaf::server`] or [`Leaf::client`].
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Subject CN.
    pub cn: String,
    /// subjectAltNames (DNS names, or IP addresses written as such).
    pub sans: Vec<String>,
    /// Extended key usages.
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    /// notBefore, in days from now.
    pub from_days: i64,
    /// notAfter, in days from now.
    pub to_days: i64,
}

impl Leaf {
    /// A server certificate for `cn` (also its only SAN), valid from yesterday for 30 days.
    pub fn server(cn: &str) -> Leaf {
        Leaf {
            cn: cn.to_string(),
            sans: vec![cn.to_string()],
            eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
            from_days: -1,
            to_days: 30,
        }
    }

    /// A client certificate for `cn`.
    pub fn client(cn: &str) -> Leaf {
        Leaf {
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            ..Leaf::server(cn)
        }
    }

    /// Replaces the SANs.
    pub fn sans(mut self, sans: &[&str]) -> Leaf {
        self.sans = sans.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Replaces the extended key usages.
    pub fn eku(mut self, eku: &[ExtendedKeyUsagePurpose]) -> Leaf {
        self.eku = eku.to_vec();
        self
    }

    /// Replaces the validity window (days from now).
    pub fn valid(mut self, from_days: i64, to_days: i64) -> Leaf {
        self.from_days = from_days;
        self.to_days = to_days;
        self
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::new(self.sans.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, self.cn.clone());
        params.extended_key_usages = self.eku.clone();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(self.from_days);
        params.not_after = now + time::Duration::days(self.to_days);
        params
    }

    /// Self-signed: (certificate PEM, key PEM).
    pub fn self_signed(&self) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = self.params().self_signed(&key).expect("self-signed leaf");
        (cert.pem(), key.serialize_pem())
    }
}

impl TestCa {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("ca").pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues `leaf`: (certificate PEM, key PEM).
    pub fn issue(&self, leaf: &Leaf) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = leaf.params().signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}
