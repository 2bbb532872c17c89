//! The double's own reading of the data-channel frame, written from the protocol note (not from the
//! client's code), and strict about what a well-behaved client must send.

use sha2::{Digest, Sha256};

pub const HL: usize = 116;

/// One frame as the double sees it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: String,
    pub schema: u32,
    pub created_ms: u64,
    pub seq: i64,
    pub flags: u64,
    /// Decoded from Java order (most significant half second on the wire).
    pub id: uuid::Uuid,
    pub payload_type: u32,
    pub payload: Vec<u8>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Parses a client frame and lists every rule it breaks (an empty list means a clean frame).
pub fn parse_strict(raw: &[u8]) -> Result<(Frame, Vec<String>), String> {
    if raw.len() < HL + 4 {
        return Err(format!("frame of {} bytes is shorter than its header", raw.len()));
    }
    let mut problems = Vec::new();
    let header_length = be32(raw, 0) as usize;
    if header_length != HL {
        problems.push(format!("HeaderLength {header_length}, expected 116"));
    }
    let type_field = &raw[4..36];
    let name_len = type_field.iter().position(|&b| b == b' ' || b == 0).unwrap_or(32);
    if type_field[name_len..].iter().any(|&b| b != b' ') {
        problems.push("MessageType is not padded with spaces".to_string());
    }
    let kind = String::from_utf8_lossy(&type_field[..name_len]).to_string();
    let schema = be32(raw, 36);
    if schema != 1 {
        problems.push(format!("SchemaVersion {schema}"));
    }
    let created_ms = be64(raw, 40);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    if created_ms == 0 || created_ms.abs_diff(now_ms) > 3_600_000 {
        problems.push(format!(
            "CreatedDate {created_ms} is not epoch milliseconds of now"
        ));
    }
    let seq = be64(raw, 48) as i64;
    let flags = be64(raw, 56);
    let mut rfc = [0u8; 16];
    rfc[..8].copy_from_slice(&raw[72..80]);
    rfc[8..].copy_from_slice(&raw[64..72]);
    let id = uuid::Uuid::from_bytes(rfc);
    if id.get_version_num() != 4 || id.get_variant() != uuid::Variant::RFC4122 {
        problems.push(format!("MessageId {id} is not a random UUID in Java order"));
    }
    let payload_type = be32(raw, 112);
    let payload_length = be32(raw, 116) as usize;
    let payload = raw[header_length.min(raw.len() - 4) + 4..].to_vec();
    if payload_length != payload.len() {
        problems.push(format!(
            "PayloadLength {payload_length} but {} payload bytes",
            payload.len()
        ));
    }
    if Sha256::digest(&payload).as_slice() != &raw[80..112] {
        problems.push("PayloadDigest does not match".to_string());
    }
    Ok((
        Frame {
            kind,
            schema,
            created_ms,
            seq,
            flags,
            id,
            payload_type,
            payload,
        },
        problems,
    ))
}

/// Builds an agent-side frame.
pub fn build(kind: &str, seq: i64, flags: u64, payload_type: u32, payload: &[u8]) -> (Vec<u8>, uuid::Uuid) {
    let id = uuid::Uuid::new_v4();
    let mut out = Vec::with_capacity(HL + 4 + payload.len());
    out.extend_from_slice(&(HL as u32).to_be_bytes());
    let mut name = [b' '; 32];
    name[..kind.len()].copy_from_slice(kind.as_bytes());
    out.extend_from_slice(&name);
    out.extend_from_slice(&1u32.to_be_bytes());
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    out.extend_from_slice(&ms.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    let b = id.as_bytes();
    out.extend_from_slice(&b[8..16]);
    out.extend_from_slice(&b[0..8]);
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(&payload_type.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    (out, id)
}

/// The agent's ack of a client message.
pub fn ack_of(f: &Frame) -> Vec<u8> {
    let body = serde_json::json!({
        "AcknowledgedMessageType": f.kind,
        "AcknowledgedMessageId": f.id.to_string(),
        "AcknowledgedMessageSequenceNumber": f.seq,
        "IsSequentialMessage": true,
    });
    build("acknowledge", 0, 3, 0, body.to_string().as_bytes()).0
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a SigV4 `Authorization` header of a `GET` upgrade for service `ssmmessages`. Returns why not.
pub fn verify_sigv4(
    path_and_query: &str,
    headers: &[(String, String)],
    secret: &str,
    region: &str,
) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let auth = header("authorization").ok_or("no Authorization header")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut credential = "";
    let mut signed = "";
    let mut signature = "";
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = v;
        }
    }
    let scope_parts: Vec<&str> = credential.splitn(2, '/').collect();
    let scope = scope_parts.get(1).ok_or("no credential scope")?;
    let s: Vec<&str> = scope.split('/').collect();
    if s.len() != 4 || s[1] != region || s[2] != "ssmmessages" || s[3] != "aws4_request" {
        return Err(format!(
            "scope {scope} is not <date>/{region}/ssmmessages/aws4_request"
        ));
    }
    let amz_date = header("x-amz-date").ok_or("no X-Amz-Date")?;
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let mut q: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    q.sort();
    let mut canonical = format!("GET\n{path}\n{}\n", q.join("&"));
    for name in signed.split(';') {
        let value = header(name).ok_or(format!("signed header {name} missing"))?;
        canonical.push_str(&format!("{name}:{}\n", value.trim()));
    }
    canonical.push_str(&format!("\n{signed}\n{}", hex(&Sha256::digest(b""))));
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), s[0].as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, b"ssmmessages");
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let expected = hex(&hmac_sha256(&k_signing, to_sign.as_bytes()));
    if expected != signature {
        return Err(format!("signature mismatch for canonical request:\n{canonical}"));
    }
    Ok(())
}

#[test]
fn hmac_matches_rfc_4231_case_2() {
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
