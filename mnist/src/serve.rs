//! `/predict`'s request path: a body parsed straight into one pixel buffer, and a
//! micro-batcher that runs the requests arriving together as one forward pass.
//!
//! Under load, requests queue while a batch runs; the batcher takes every queued request
//! (up to `max_batch` images) as the next batch, so 32 concurrent clients cost about as
//! much as one batch of 32, not 32 passes. `wait` lets a lone request wait for company,
//! which trades latency at low load for larger batches.

use std::fmt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::idx::PIXELS;
use crate::infer::Predictor;
use crate::model::DeviceKind;

/// Images per `{"images": [...]}` request.
pub const MAX_IMAGES: usize = 1024;

/// A parsed `/predict` body: `n` images of 784 pixels, row after row.
#[derive(Debug, PartialEq)]
pub struct Images {
    /// Every image's 784 pixels, one image after another.
    pub pixels: Vec<f32>,
    /// `{"images": [...]}`, answered with a list, rather than `{"image": [...]}`.
    pub batch: bool,
}

/// Parses `{"image": [784 numbers]}` or `{"images": [[784 numbers], ...]}` without an
/// intermediate JSON tree: every number goes straight into one `f32` buffer.
pub fn parse(body: &[u8]) -> Result<Images, String> {
    let mut pixels = Vec::with_capacity(PIXELS);
    let batch = serde_json::Deserializer::from_slice(body)
        .deserialize_map(BodyVisitor(&mut pixels))
        .map_err(|err| err.to_string())?
        .ok_or_else(|| {
            "send {\"image\": [784 numbers]} or {\"images\": [[784 numbers], ...]}".to_owned()
        })?;
    Ok(Images { pixels, batch })
}

/// The top-level object; yields whether it was the batch form, `None` if neither key.
struct BodyVisitor<'a>(&'a mut Vec<f32>);

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = Option<bool>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with image or images")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut form = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let batch = match key.as_ref() {
                "image" => false,
                "images" => true,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if form.is_some() {
                return Err(de::Error::custom("send image or images, not both"));
            }
            form = Some(batch);
            if batch {
                map.next_value_seed(ImagesSeed(self.0))?;
            } else {
                map.next_value_seed(PixelsSeed {
                    into: self.0,
                    what: "image",
                })?;
            }
        }
        Ok(form)
    }
}

/// One image's 784 numbers, appended to the shared buffer.
struct PixelsSeed<'a> {
    into: &'a mut Vec<f32>,
    what: &'static str,
}

impl<'de> DeserializeSeed<'de> for PixelsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PixelsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} as an array of 784 numbers", self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let start = self.into.len();
        while let Some(value) = seq.next_element::<f64>()? {
            let pixel = value as f32;
            if !pixel.is_finite() {
                return Err(de::Error::custom(format!(
                    "{} holds a value that is not a finite number",
                    self.what
                )));
            }
            if self.into.len() - start == PIXELS {
                return Err(de::Error::custom(format!(
                    "{} has more than 784 values; an image has 784 (28x28, row by row)",
                    self.what
                )));
            }
            self.into.push(pixel);
        }
        let count = self.into.len() - start;
        if count != PIXELS {
            return Err(de::Error::custom(format!(
                "{} has {count} values; an image has 784 (28x28, row by row)",
                self.what
            )));
        }
        Ok(())
    }
}

/// `images`: 1 to `MAX_IMAGES` images.
struct ImagesSeed<'a>(&'a mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for ImagesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ImagesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "images as a list of 1 to {MAX_IMAGES} images")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut count = 0;
        loop {
            if count == MAX_IMAGES {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(format!(
                        "images must be a list of 1 to {MAX_IMAGES} images"
                    )));
                }
                break;
            }
            let seed = PixelsSeed {
                into: self.0,
                what: "an image in images",
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            count += 1;
        }
        if count == 0 {
            return Err(de::Error::custom(format!(
                "images must be a list of 1 to {MAX_IMAGES} images"
            )));
        }
        Ok(())
    }
}

/// `mnist-serve`'s params, with their defaults. The address to bind is not among them:
/// it is the operator's (`LANCER_SERVE_HOST`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeParams {
    /// The port to bind (0: any free one).
    pub port: u16,
    /// The Lance version of the model to serve (the platform's input version, else the
    /// newest).
    pub version: Option<u64>,
    /// Where to infer (cpu).
    pub device: DeviceKind,
    /// The most images per forward pass, 1 to 1,024 (64).
    pub max_batch: usize,
    /// How long a batch that is not full waits for more requests, in microseconds, at
    /// most 100,000 (0: it takes what is queued).
    pub batch_wait_us: u64,
}

impl Default for ServeParams {
    fn default() -> Self {
        Self {
            port: 0,
            version: None,
            device: DeviceKind::Cpu,
            max_batch: 64,
            batch_wait_us: 0,
        }
    }
}

impl ServeParams {
    /// The batcher's options; an error for a value out of its range.
    pub fn batch_options(&self) -> Result<BatchOptions> {
        let (max_batch, wait) = (self.max_batch, self.batch_wait_us);
        if !(1..=MAX_IMAGES).contains(&max_batch) {
            anyhow::bail!("max_batch must be between 1 and {MAX_IMAGES}, not {max_batch}");
        }
        if wait > 100_000 {
            anyhow::bail!("batch_wait_us must be at most 100000 (0.1 s), not {wait}");
        }
        Ok(BatchOptions {
            max_batch,
            wait: Duration::from_micros(wait),
        })
    }
}

/// How the batcher groups requests.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// The most images one forward pass takes from the queue (a larger request runs alone).
    pub max_batch: usize,
    /// How long a batch that is not full waits for more requests.
    pub wait: Duration,
}

/// One request's images and where its answer goes: the probabilities come back in the
/// request's own buffer, 10 per image, so answering allocates nothing.
struct Job {
    pixels: Vec<f32>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>, String>>,
}

impl Job {
    fn images(&self) -> usize {
        self.pixels.len() / PIXELS
    }
}

/// The handle request handlers send work through; the model lives on the batch thread.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the batch thread, which runs until every handle is dropped.
    pub fn start(predictor: Predictor, options: BatchOptions) -> Self {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("predict-batcher".into())
            .spawn(move || run_batches(predictor, &queue, options))
            .expect("spawning the batch thread");
        Self { jobs }
    }

    /// The softmax probabilities of `pixels` (n images), 10 per image.
    pub async fn predict(&self, pixels: Vec<f32>) -> Result<Vec<f32>, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job { pixels, reply })
            .map_err(|_| "the model has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the model has stopped".to_owned())?
    }
}

/// The batch thread's buffers, kept from batch to batch.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    images: usize,
    pixels: Vec<f32>,
    probabilities: Vec<f32>,
}

fn run_batches(mut predictor: Predictor, queue: &mpsc::Receiver<Job>, options: BatchOptions) {
    let mut waiting: Option<Job> = None;
    let mut batch = Batch::default();
    loop {
        let first = match waiting.take().map_or_else(|| queue.recv(), Ok) {
            Ok(job) => job,
            Err(_) => return,
        };
        waiting = batch.gather(first, queue, options);
        batch.answer(&mut predictor);
    }
}

impl Batch {
    /// `first` and what joins it within the wait, up to `max_batch` images; returns the
    /// request that did not fit, which starts the next batch.
    fn gather(
        &mut self,
        first: Job,
        queue: &mpsc::Receiver<Job>,
        options: BatchOptions,
    ) -> Option<Job> {
        self.images = first.images();
        self.jobs.push(first);
        let deadline = Instant::now() + options.wait;
        while self.images < options.max_batch {
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => queue.recv_timeout(left).ok(),
                _ => queue.try_recv().ok(),
            };
            let job = next?;
            if self.images + job.images() > options.max_batch {
                return Some(job);
            }
            self.images += job.images();
            self.jobs.push(job);
        }
        None
    }

    /// One forward pass over the batch; each request gets its rows back in its buffer.
    fn answer(&mut self, predictor: &mut Predictor) {
        self.probabilities.resize(self.images * 10, 0.0);
        // A lone request is read where it is; several are laid end to end first.
        let pixels = if let [job] = self.jobs.as_slice() {
            &job.pixels
        } else {
            self.pixels.clear();
            for job in &self.jobs {
                self.pixels.extend_from_slice(&job.pixels);
            }
            &self.pixels
        };
        let outcome = predictor
            .probabilities(pixels, &mut self.probabilities)
            .map_err(|err| format!("prediction failed: {err}"));
        tracing::debug!(requests = self.jobs.len(), images = self.images, "batch");
        let mut row = 0;
        for mut job in self.jobs.drain(..) {
            let rows = job.images() * 10;
            let answer = outcome.clone().map(|()| {
                job.pixels.truncate(rows);
                job.pixels
                    .copy_from_slice(&self.probabilities[row..row + rows]);
                job.pixels
            });
            row += rows;
            // A client that has gone away no longer wants its answer.
            let _ = job.reply.send(answer);
        }
    }
}

#[derive(serde::Serialize)]
struct Answer<'a> {
    prediction: usize,
    confidence: f32,
    probabilities: &'a [f32],
}

/// The response body: one answer, or a list of them for the batch form.
pub fn respond(probabilities: &[f32], batch: bool) -> Vec<u8> {
    let answers = probabilities.chunks_exact(10).map(|p| {
        let (prediction, confidence) =
            p.iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |best, (digit, q)| if q > best.1 { (digit, q) } else { best },
                );
        Answer {
            prediction,
            confidence,
            probabilities: p,
        }
    });
    let mut out = Vec::with_capacity(256 * probabilities.len() / 10);
    let written = if batch {
        serde_json::to_writer(&mut out, &answers.collect::<Vec<_>>())
    } else {
        serde_json::to_writer(&mut out, &answers.take(1).next())
    };
    written.expect("answers serialise");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_params;
    use crate::model::{Net, images_tensor};
    use candle_core::Device;
    use serde_json::json;

    fn params(given: serde_json::Value) -> Result<ServeParams> {
        parse_params(given.as_object().expect("an object"))
    }

    #[test]
    fn the_params_default_as_documented_and_refuse_what_they_lack() -> Result<()> {
        let defaults = ServeParams {
            port: 0,
            version: None,
            device: DeviceKind::Cpu,
            max_batch: 64,
            batch_wait_us: 0,
        };
        assert_eq!(params(json!({}))?, defaults);
        assert_eq!(ServeParams::default(), defaults);
        // As the tests, the READMEs, run-pipeline and the bench give them.
        for given in [
            json!({"port": 0}),
            json!({"port": 8080}),
            json!({"port": 0, "batch_wait_us": 1000}),
            json!({"version": 3, "device": "cpu", "max_batch": 1024}),
        ] {
            params(given.clone())?.batch_options()?;
        }
        let err = params(json!({"max_batches": 8}))
            .expect_err("a typo")
            .to_string();
        assert!(err.contains("unknown field `max_batches`"), "{err}");
        let err = params(json!({"device": "gpu"}))
            .expect_err("no such device")
            .to_string();
        assert!(
            err.starts_with("param device: unknown variant `gpu`"),
            "{err}"
        );
        let err = params(json!({"port": 70000}))
            .expect_err("too large")
            .to_string();
        assert!(err.starts_with("param port:"), "{err}");
        assert!(params(json!({"max_batch": 0}))?.batch_options().is_err());
        assert!(
            params(json!({"batch_wait_us": 100_001}))?
                .batch_options()
                .is_err()
        );
        Ok(())
    }

    fn image(seed: usize) -> Vec<f32> {
        (0..PIXELS)
            .map(|i| ((i * 7 + seed * 13) % 256) as f32 / 255.0)
            .collect()
    }

    #[test]
    fn a_body_is_parsed_into_one_buffer_in_either_form() {
        let one = parse(
            json!({"image": image(1), "note": {"x": [1]}})
                .to_string()
                .as_bytes(),
        )
        .expect("single");
        assert_eq!(
            one,
            Images {
                pixels: image(1),
                batch: false
            }
        );
        let two = parse(
            json!({"images": [image(1), image(2)]})
                .to_string()
                .as_bytes(),
        )
        .expect("batch");
        assert_eq!(two.pixels, [image(1), image(2)].concat());
        assert!(two.batch);
    }

    #[test]
    fn malformed_bodies_are_refused_with_what_is_wrong() {
        let cases = [
            (json!({"image": [0.5, 0.5]}).to_string(), "has 2 values"),
            (
                json!({"image": vec![0.5; 785]}).to_string(),
                "more than 784",
            ),
            (json!({"images": []}).to_string(), "1 to 1024"),
            (
                json!({"images": vec![vec![0.0; 784]; 1025]}).to_string(),
                "1 to 1024",
            ),
            (
                json!({"image": image(1), "images": [image(2)]}).to_string(),
                "not both",
            ),
            (json!({"pixels": image(1)}).to_string(), "send {\"image\""),
            (json!({"image": "seven"}).to_string(), "784 numbers"),
            (
                format!("{{\"image\": [1e999{}]}}", ", 0".repeat(783)),
                "number out of range",
            ),
            ("{\"image\": [".to_owned(), "EOF"),
        ];
        for (body, expected) in cases {
            let err = parse(body.as_bytes()).expect_err(&body[..body.len().min(40)]);
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_answers_equal_one_at_a_time_answers() {
        let device = Device::Cpu;
        let (net, _) = Net::init(7, &device).expect("net");
        let alone: Vec<Vec<f32>> = (0..24)
            .map(|n| {
                let x = images_tensor(&image(n), &device).expect("tensor");
                net.probabilities(&x)
                    .and_then(|p| Ok(p.flatten_all()?.to_vec1()?))
                    .expect("p")
            })
            .collect();
        let options = BatchOptions {
            max_batch: 8,
            wait: Duration::from_millis(5),
        };
        let predictor = Predictor::new(&net, &device).expect("predictor");
        let batcher = Batcher::start(predictor, options);
        // 16 single requests and 4 of two images each, all at once.
        let mut requests = Vec::new();
        for n in 0..16 {
            requests.push((vec![n], image(n)));
        }
        for n in (16..24).step_by(2) {
            requests.push((vec![n, n + 1], [image(n), image(n + 1)].concat()));
        }
        let answers = futures::future::join_all(requests.iter().map(|(_, pixels)| {
            let batcher = batcher.clone();
            let pixels = pixels.clone();
            async move { batcher.predict(pixels).await.expect("answer") }
        }))
        .await;
        for ((rows, _), answer) in requests.iter().zip(answers) {
            let expected: Vec<f32> = rows.iter().flat_map(|&n| alone[n].clone()).collect();
            assert_eq!(answer.len(), expected.len());
            for (a, b) in answer.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-5, "{a} != {b} for images {rows:?}");
            }
        }
    }
}
