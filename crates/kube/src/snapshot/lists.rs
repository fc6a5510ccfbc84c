//! Reading lists from the apiserver: large lists in one streamed protobuf request or pipelined
//! pages, small ones in pages, each answer decoded into the slim wire types.

use super::*;

/// How one list's pages are asked for and decoded.
pub(super) struct Pages<D> {
    /// The `Accept` header; `None` keeps the client's default (JSON).
    accept: Option<&'static str>,
    /// Decodes one page body, given its `Content-Type`, into its items, calling back with the
    /// continue token as soon as it has been read.
    decode: DecodePage<D>,
}

/// `(Content-Type, body, on_continue) → items`.
pub(super) type DecodePage<D> = fn(Option<&str>, &[u8], &mut dyn FnMut(&str)) -> Result<Vec<D>, PageError>;

/// Why a page body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(super) enum PageError {
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("protobuf: {0}")]
    Protobuf(#[from] protobuf::Error),
}

impl<D: DeserializeOwned> Pages<D> {
    /// JSON, whatever the `Content-Type` says (as kube reads every response).
    pub(super) fn json() -> Self {
        Pages { accept: None, decode: |_, body, on_continue| json_page(body, on_continue) }
    }
}

impl<D: DeserializeOwned + protobuf::Item> Pages<D> {
    /// Protobuf (JSON accepted too, each page decoded by its `Content-Type`), or JSON only.
    pub(super) fn preferred(encoding: Encoding) -> Self {
        match encoding {
            Encoding::Json => Self::json(),
            Encoding::Protobuf => Pages {
                accept: Some(protobuf::ACCEPT),
                decode: |content_type, body, on_continue| {
                    if protobuf::is_protobuf(content_type) {
                        Ok(protobuf::list_page(body, on_continue)?)
                    } else {
                        json_page(body, on_continue)
                    }
                },
            },
        }
    }
}

/// One JSON page: the items as `D`, the continue token handed over when `metadata` is read.
pub(super) fn json_page<D: DeserializeOwned>(
    body: &[u8],
    on_continue: &mut dyn FnMut(&str),
) -> Result<Vec<D>, PageError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let items = serde::de::DeserializeSeed::deserialize(
        PageSeed::<D, _> { on_continue, items: std::marker::PhantomData },
        &mut de,
    )?;
    de.end()?;
    Ok(items)
}

/// One page of pods decoded and projected exactly as [`read_snapshot`] does it, from a body
/// and `Content-Type` fetched by the caller (protobuf or JSON), with the page's continue
/// token: what tests use to check both decoders on the bytes of a real apiserver.
pub fn decode_pod_page(content_type: Option<&str>, body: &[u8]) -> Result<PodPage, Error> {
    let mut continue_token = None;
    let items = (Pages::<wire::Pod>::preferred(Encoding::Protobuf).decode)(content_type, body, &mut |t| {
        continue_token = Some(t.to_owned());
    })
    .map_err(|e| Error::Decode { context: "decoding a page of pods".into(), detail: e.to_string() })?;
    Ok(PodPage { pods: items.into_iter().map(pod_from_wire).collect(), continue_token })
}

/// A page of pods, from [`decode_pod_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPage {
    /// The pods in the page's order, with their scheduling constraints.
    pub pods: Vec<(PodInfo, Scheduling)>,
    /// The token of the next page; `None` on the last.
    pub continue_token: Option<String>,
}

/// A response body and its `Content-Type`.
pub(super) struct Page {
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A large list: streamed in one request, or in pages.
pub(super) async fn list_large<K, D, T>(
    client: &Client,
    what: &str,
    large: LargeLists,
    convert: impl FnMut(D) -> T,
) -> Result<Vec<T>, Error>
where
    K: kube::Resource<DynamicType = ()>,
    D: DeserializeOwned + protobuf::Item,
{
    match large {
        LargeLists::Paged(encoding) => {
            list_slim::<K, D, T>(client, what, Pages::preferred(encoding), convert).await
        }
        LargeLists::Streamed => {
            let mut convert = convert;
            match list_streamed::<K, D, T>(client, what, &mut convert).await? {
                Some(items) => Ok(items),
                // The server (or a proxy) answered JSON: pages of it, as every server serves.
                None => list_slim::<K, D, T>(client, what, Pages::json(), convert).await,
            }
        }
    }
}

/// Lists every object of resource `K` in ONE unpaginated protobuf request, decoding items as
/// the body arrives ([`protobuf::ListStream`]) and converting each at once. `Ok(None)` when the
/// server answered JSON instead (the body is not read).
pub(super) async fn list_streamed<K, D, T>(
    client: &Client,
    what: &str,
    convert: &mut impl FnMut(D) -> T,
) -> Result<Option<Vec<T>>, Error>
where
    K: kube::Resource<DynamicType = ()>,
    D: protobuf::Item,
{
    use http_body_util::BodyExt;
    let api_error = |e: kube::Error| Error::Api { context: format!("listing {what}"), source: Box::new(e) };
    let mut request = kube::core::Request::new(K::url_path(&(), None))
        .list(&ListParams::default())
        .map_err(|e| api_error(kube::Error::BuildRequest(e)))?;
    request.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static(protobuf::ACCEPT));
    request.extensions_mut().insert("list");
    let response = client.send(request.map(kube::client::Body::from)).await.map_err(api_error)?;
    let code = response.status();
    let content_type =
        response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if code.is_client_error() || code.is_server_error() {
        let body = response.into_body().collect_bytes().await.map_err(api_error)?;
        return Err(api_error(error_status(code, content_type.as_deref(), &body)));
    }
    if !protobuf::is_protobuf(content_type.as_deref()) {
        return Ok(None);
    }
    let decode_error =
        |e: protobuf::Error| Error::Decode { context: format!("listing {what}"), detail: e.to_string() };
    let mut body = response.into_body();
    let mut stream = protobuf::ListStream::<D>::new();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| api_error(kube::Error::Service(Box::new(e))))?;
        if let Ok(data) = frame.into_data() {
            stream.feed(&data, &mut |item| out.push(convert(item))).map_err(decode_error)?;
        }
    }
    stream.finish().map_err(decode_error)?;
    Ok(Some(out))
}

/// Sends one list request and collects its body. An error answer becomes kube's `Status`
/// error, decoded from whichever encoding the apiserver answered in.
pub(super) async fn fetch_page(client: Client, request: http::Request<Vec<u8>>) -> Result<Page, kube::Error> {
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let code = response.status();
    let content_type =
        response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = Vec::from(response.into_body().collect_bytes().await?);
    if !(code.is_client_error() || code.is_server_error()) {
        return Ok(Page { content_type, body });
    }
    Err(error_status(code, content_type.as_deref(), &body))
}

/// An error answer as kube's `Status` error, decoded from whichever encoding the apiserver
/// answered in: it negotiates errors like objects, so kube's own (JSON-only) error parsing
/// would see protobuf bytes.
pub(super) fn error_status(code: http::StatusCode, content_type: Option<&str>, body: &[u8]) -> kube::Error {
    let decoded = if protobuf::is_protobuf(content_type) {
        protobuf::status(body).ok()
    } else {
        serde_json::from_slice::<kube::core::Status>(body).ok()
    };
    // Not every error is a Status (a proxy's HTML page, a plain-text 404): its text, as kube does.
    let mut status = decoded.unwrap_or_else(|| {
        kube::core::Status::failure(String::from_utf8_lossy(body).trim(), "Failed to parse error data")
    });
    if status.code == 0 {
        status.code = code.as_u16();
    }
    kube::Error::Api(Box::new(status))
}

/// Lists every object of resource `K` in all namespaces, page by page, decoding each item as
/// `D` (a slim [`wire`] type, or `K` itself when the objects are few) as `pages` says, and
/// converting each page before decoding the next.
///
/// Pages are pipelined: the apiserver writes a list's `metadata` (with the continue token)
/// before its items, so the request for the next page goes out as soon as the token is
/// parsed, and the apiserver encodes page N+1 while this side decodes page N. Without it the
/// two sides take turns, and a 60-page pod list pays both costs in full.
pub(super) async fn list_slim<K, D, T>(
    client: &Client,
    what: &str,
    pages: Pages<D>,
    mut convert: impl FnMut(D) -> T,
) -> Result<Vec<T>, Error>
where
    K: kube::Resource<DynamicType = ()>,
{
    let request = kube::core::Request::new(K::url_path(&(), None));
    let params = ListParams::default().limit(PAGE_SIZE);
    let context = |page_no: usize| {
        if page_no == 0 {
            format!("listing {what}")
        } else {
            // A 410 here means the continue token expired (the list took longer than the
            // apiserver keeps its resourceVersion): a retry of the whole read fixes it.
            format!("listing {what} (page {} of {PAGE_SIZE})", page_no + 1)
        }
    };
    let fetch = |params: &ListParams| -> Result<PageFetch, kube::Error> {
        let mut req = request.list(params).map_err(kube::Error::BuildRequest)?;
        if let Some(accept) = pages.accept {
            req.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
        }
        req.extensions_mut().insert("list");
        Ok(PageFetch(tokio::spawn(fetch_page(client.clone(), req))))
    };
    let mut out = Vec::new();
    let mut pending =
        Some(fetch(&params).map_err(|e| Error::Api { context: context(0), source: Box::new(e) })?);
    let mut page_no = 0usize;
    while let Some(mut task) = pending.take() {
        let api_error = |e: kube::Error| Error::Api { context: context(page_no), source: Box::new(e) };
        let page = (&mut task.0)
            .await
            .map_err(|e| api_error(kube::Error::Service(Box::new(e))))?
            .map_err(api_error)?;
        let mut next_error = None;
        let items = {
            let mut on_continue = |token: &str| match fetch(&params.clone().continue_token(token)) {
                Ok(next) => pending = Some(next),
                Err(e) => next_error = Some(e),
            };
            (pages.decode)(page.content_type.as_deref(), &page.body, &mut on_continue)
                .map_err(|e| Error::Decode { context: context(page_no), detail: e.to_string() })?
        };
        drop(page);
        if let Some(e) = next_error {
            return Err(Error::Api { context: context(page_no + 1), source: Box::new(e) });
        }
        out.extend(items.into_iter().map(&mut convert));
        page_no += 1;
    }
    Ok(out)
}

/// A page being fetched by its own task; dropping it (an earlier page failed) cancels it.
pub(super) struct PageFetch(tokio::task::JoinHandle<Result<Page, kube::Error>>);

impl Drop for PageFetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decodes one JSON page of a list: its items as `D`, calling `on_continue` with the continue
/// token the moment `metadata` has been read (the API server writes it before the items).
pub(super) struct PageSeed<'a, D, F: ?Sized> {
    on_continue: &'a mut F,
    items: std::marker::PhantomData<D>,
}

impl<'de, D: serde::Deserialize<'de>, F: FnMut(&str) + ?Sized> serde::de::DeserializeSeed<'de>
    for PageSeed<'_, D, F>
{
    type Value = Vec<D>;

    fn deserialize<De: serde::Deserializer<'de>>(self, deserializer: De) -> Result<Vec<D>, De::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, D: serde::Deserialize<'de>, F: FnMut(&str) + ?Sized> serde::de::Visitor<'de>
    for PageSeed<'_, D, F>
{
    type Value = Vec<D>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Kubernetes list")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<D>, A::Error> {
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "metadata" => {
                    let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta = map.next_value()?;
                    if let Some(token) = meta.continue_.as_deref().filter(|t| !t.is_empty()) {
                        (self.on_continue)(token);
                    }
                }
                "items" => items = map.next_value::<Option<Vec<D>>>()?.unwrap_or_default(),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(items)
    }
}

/// Lists the full k8s-openapi objects of `api` with the caller's selectors, page by page (the
/// drain's reads: few objects), also returning the list's resourceVersion (every page of a
/// paginated list is served at the first page's), from which a watch can start without
/// missing a change.
pub(crate) async fn list_paged<K, T>(
    api: &Api<K>,
    params: ListParams,
    what: &str,
    mut convert: impl FnMut(K) -> T,
) -> Result<(Vec<T>, String), Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE_SIZE);
    let mut page_no = 0usize;
    loop {
        let page = api.list(&params).await.map_err(|e| Error::Api {
            context: if page_no == 0 {
                format!("listing {what}")
            } else {
                // A 410 here means the continue token expired (the list took longer than the
                // apiserver keeps its resourceVersion): a retry of the whole read fixes it.
                format!("listing {what} (page {} of {PAGE_SIZE})", page_no + 1)
            },
            source: Box::new(e),
        })?;
        let next = page.metadata.continue_.filter(|t| !t.is_empty());
        let version = page.metadata.resource_version.unwrap_or_default();
        out.extend(page.items.into_iter().map(&mut convert));
        match next {
            Some(token) => {
                params = params.continue_token(&token);
                page_no += 1;
            }
            None => return Ok((out, version)),
        }
    }
}
