//! Call definitions: each call is a marker type naming its path and message types, so both ends
//! agree on them at compile time.

use serde::{de::DeserializeOwned, Serialize};

/// A call of the protocol, served at `POST /v1/<NAME>`.
pub trait Method {
    /// Path segment after `/v1/`.
    const NAME: &'static str;

    /// The request path.
    fn path() -> String {
        format!("/v1/{}", Self::NAME)
    }
}

/// A call with one JSON request and one JSON response.
pub trait Unary: Method {
    /// Request body.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// Response body.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// A call whose bodies are frame streams: the request body opens with a
/// [`crate::frame::FrameKind::Message`] frame holding `Request`; the response's message frames hold
/// `Event`s.
pub trait Streaming: Method {
    /// Opening message.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// Messages in the response stream.
    type Event: Serialize + DeserializeOwned + Send + 'static;
}
