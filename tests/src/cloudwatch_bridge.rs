//! A test-only bridge that lets the current AWS SDK's CloudWatch client talk to moto's server.
//!
//! `aws-sdk-cloudwatch` speaks only Smithy RPC v2 CBOR; moto 5.2.x serves CloudWatch's Query
//! and JSON protocols but not CBOR (getmoto/moto#9195; docs/ec2-facts.md, "moto's server"). The bridge listens
//! on loopback, turns each CBOR request (`POST /service/{Service}/operation/{Op}`) into the JSON
//! protocol's (`X-Amz-Target: {Service}.{Op}`, `application/x-amz-json-1.0`), forwards it with
//! its signature headers to moto, and turns moto's JSON answer back into CBOR. The SDK stays
//! untouched and maintained; only the wire encoding is translated, member by member.
//!
//! CBOR timestamps are tag 1 (epoch seconds); JSON's are bare numbers. Requests lose the tag;
//! answers gain it on the members CloudWatch's model types as timestamps (see
//! [`TIMESTAMP_MEMBERS`]). Blobs do not occur in the operations the backend and tests use
//! (GetMetricData, PutMetricData) and are refused.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use minicbor::data::{IanaTag, Tag, Type};
use serde_json::{Map, Number, Value};
use tokio::net::{TcpListener, TcpStream};

/// Members of CloudWatch's shapes that hold timestamps (or lists of them).
pub const TIMESTAMP_MEMBERS: &[&str] = &[
    "Timestamp",
    "Timestamps",
    "StartTime",
    "EndTime",
    "StateUpdatedTimestamp",
    "StateTransitionedTimestamp",
    "AlarmConfigurationUpdatedTimestamp",
    "LastUpdateTimestamp",
    "LastModified",
];

/// A running bridge; its task ends when the test's runtime does.
pub struct CloudWatchBridge {
    /// The URL to give the SDK as CloudWatch's endpoint.
    pub endpoint: String,
}

impl CloudWatchBridge {
    /// Starts a bridge on a free loopback port in front of moto at `moto_endpoint`.
    pub async fn start(moto_endpoint: &str) -> anyhow::Result<Self> {
        let moto: SocketAddr = moto_endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("moto endpoint {moto_endpoint:?} is not http://IP:PORT"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the bridge")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| async move {
                        Ok::<_, std::convert::Infallible>(translate(req, moto).await.unwrap_or_else(|err| {
                            reply(
                                StatusCode::BAD_GATEWAY,
                                format!("cloudwatch bridge: {err:#}").into_bytes(),
                                "text/plain",
                            )
                        }))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { endpoint })
    }
}

fn reply(status: StatusCode, body: Vec<u8>, content_type: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-type", content_type.parse().expect("a valid header"));
    headers.insert("smithy-protocol", "rpc-v2-cbor".parse().expect("a valid header"));
    response
}

async fn translate(req: Request<Incoming>, moto: SocketAddr) -> anyhow::Result<Response<Full<Bytes>>> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("service"), Some(service), Some("operation"), Some(operation)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("{path} is not an RPC v2 path (/service/S/operation/O)");
    };
    let target = format!("{service}.{operation}");
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.context("reading the request")?.to_bytes();
    let json = if body.is_empty() { Value::Object(Map::new()) } else { cbor_to_json(&body)? };
    let json_body = serde_json::to_vec(&json)?;

    let stream = TcpStream::connect(moto).await.context("connecting to moto")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut forward = Request::post("/")
        .header("host", moto.to_string())
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", target);
    // moto routes by the signature's credential scope ("monitoring"); it does not verify it.
    for name in ["authorization", "x-amz-date", "x-amz-security-token"] {
        if let Some(value) = headers.get(name) {
            forward = forward.header(name, value);
        }
    }
    let answer = sender.send_request(forward.body(Full::new(Bytes::from(json_body)))?).await?;
    let status = answer.status();
    let bytes = answer.into_body().collect().await?.to_bytes();
    let value: Value = if bytes.is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(&bytes)
            .with_context(|| format!("moto answered {status} with no JSON: {}", String::from_utf8_lossy(&bytes)))?
    };
    Ok(reply(status, json_to_cbor(&value)?, "application/cbor"))
}

/// Decodes one CBOR data item into JSON (timestamps become epoch seconds).
pub fn cbor_to_json(bytes: &[u8]) -> anyhow::Result<Value> {
    let mut d = minicbor::Decoder::new(bytes);
    decode(&mut d)
}

fn decode(d: &mut minicbor::Decoder<'_>) -> anyhow::Result<Value> {
    Ok(match d.datatype()? {
        Type::Bool => Value::Bool(d.bool()?),
        Type::Null | Type::Undefined => {
            d.skip()?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(d.u64()?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => Value::from(d.i64()?),
        Type::F16 | Type::F32 | Type::F64 => Number::from_f64(d.f64()?).map_or(Value::Null, Value::Number),
        Type::String => Value::String(d.str()?.to_string()),
        Type::StringIndef => {
            let mut s = String::new();
            for chunk in d.str_iter()? {
                s.push_str(chunk?);
            }
            Value::String(s)
        }
        Type::Array | Type::ArrayIndef => {
            let mut items = Vec::new();
            match d.array()? {
                Some(n) => {
                    for _ in 0..n {
                        items.push(decode(d)?);
                    }
                }
                None => {
                    while d.datatype()? != Type::Break {
                        items.push(decode(d)?);
                    }
                    d.set_position(d.position() + 1);
                }
            }
            Value::Array(items)
        }
        Type::Map | Type::MapIndef => {
            let mut map = Map::new();
            match d.map()? {
                Some(n) => {
                    for _ in 0..n {
                        let key = d.str()?.to_string();
                        map.insert(key, decode(d)?);
                    }
                }
                None => {
                    while d.datatype()? != Type::Break {
                        let key = d.str()?.to_string();
                        map.insert(key, decode(d)?);
                    }
                    d.set_position(d.position() + 1);
                }
            }
            Value::Object(map)
        }
        Type::Tag => {
            let tag = d.tag()?;
            if tag != Tag::from(IanaTag::Timestamp) {
                bail!("CBOR tag {tag:?} is not a timestamp");
            }
            decode(d)?
        }
        other => bail!("CBOR {other:?} has no JSON form here (blobs are not used by these operations)"),
    })
}

/// Encodes JSON as CBOR, tagging the members in [`TIMESTAMP_MEMBERS`] as timestamps.
pub fn json_to_cbor(value: &Value) -> anyhow::Result<Vec<u8>> {
    let mut e = minicbor::Encoder::new(Vec::new());
    encode(&mut e, value, false)?;
    Ok(e.into_writer())
}

fn encode(e: &mut minicbor::Encoder<Vec<u8>>, value: &Value, timestamp: bool) -> anyhow::Result<()> {
    match value {
        Value::Null => {
            e.null()?;
        }
        Value::Bool(b) => {
            e.bool(*b)?;
        }
        Value::Number(n) => {
            if timestamp {
                e.tag(Tag::from(IanaTag::Timestamp))?;
                e.f64(n.as_f64().unwrap_or_default())?;
            } else if n.is_f64() {
                e.f64(n.as_f64().unwrap_or_default())?;
            } else if let Some(u) = n.as_u64() {
                e.u64(u)?;
            } else {
                e.i64(n.as_i64().unwrap_or_default())?;
            }
        }
        Value::String(s) => {
            e.str(s)?;
        }
        Value::Array(items) => {
            e.array(items.len() as u64)?;
            for item in items {
                encode(e, item, timestamp)?;
            }
        }
        Value::Object(map) => {
            e.map(map.len() as u64)?;
            for (key, item) in map {
                e.str(key)?;
                encode(e, item, TIMESTAMP_MEMBERS.contains(&key.as_str()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_cbor_and_timestamps_are_tagged() {
        let value = serde_json::json!({
            "MetricDataResults": [{"Id": "i0", "Timestamps": [1764399960], "Values": [1000.0], "StatusCode": "Complete"}],
            "Messages": [],
            "NextToken": null,
            "Count": 3,
            "Negative": -2,
            "Ok": true
        });
        let bytes = json_to_cbor(&value).expect("encodes");
        // Tag 1 (0xc1) before the timestamp.
        assert!(bytes.windows(1).any(|w| w == [0xc1]), "{bytes:02x?}");
        let mut back = cbor_to_json(&bytes).expect("decodes");
        // The timestamp comes back as a float of the same value.
        back["MetricDataResults"][0]["Timestamps"][0] = serde_json::json!(1764399960);
        assert_eq!(back, value);
    }

    #[test]
    fn indefinite_maps_and_arrays_decode() {
        // {_ "A": [_ 1, 2], "B": "x"}
        let bytes = [0xbf, 0x61, b'A', 0x9f, 0x01, 0x02, 0xff, 0x61, b'B', 0x61, b'x', 0xff];
        assert_eq!(cbor_to_json(&bytes).expect("decodes"), serde_json::json!({"A": [1, 2], "B": "x"}));
    }

    #[test]
    fn a_blob_is_refused_with_a_reason() {
        let err = cbor_to_json(&[0x41, 0x00]).expect_err("a byte string");
        assert!(format!("{err:#}").contains("blob"), "{err:#}");
    }
}
