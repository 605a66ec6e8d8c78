//! Streaming reader of the IDX files MNIST ships in (plain or gzip).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

/// The first word of an IDX image file (unsigned bytes, three dimensions).
pub const IMAGE_MAGIC: u32 = 0x0000_0803;
/// The first word of an IDX label file (unsigned bytes, one dimension).
pub const LABEL_MAGIC: u32 = 0x0000_0801;
/// An MNIST image's side, in pixels.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;

fn open(path: &Path) -> Result<Box<dyn Read + Send>> {
    let mut file =
        BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let gzip = {
        use std::io::BufRead;
        let head = file.fill_buf()?;
        ensure!(!head.is_empty(), "{} is empty", path.display());
        head.starts_with(&[0x1f, 0x8b])
    };
    if gzip {
        Ok(Box::new(BufReader::new(flate2::read::GzDecoder::new(file))))
    } else {
        Ok(Box::new(file))
    }
}

fn read_u32(reader: &mut impl Read, what: &str) -> Result<u32> {
    let mut bytes = [0u8; 4];
    reader
        .read_exact(&mut bytes)
        .with_context(|| format!("{what}: header is truncated"))?;
    Ok(u32::from_be_bytes(bytes))
}

/// An IDX image file: a header, then `count` images of 28x28 unsigned bytes.
pub struct ImageReader {
    reader: Box<dyn Read + Send>,
    /// The images the header promises.
    pub count: usize,
    remaining: usize,
    name: String,
}

impl ImageReader {
    /// Opens `path` and checks its header: the magic and 28x28 images.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let mut reader = open(path)?;
        let magic = read_u32(&mut reader, &name)?;
        if magic != IMAGE_MAGIC {
            bail!(
                "{name} is not an IDX image file (magic {magic:#010x}, expected {IMAGE_MAGIC:#010x})"
            );
        }
        let count = read_u32(&mut reader, &name)? as usize;
        let rows = read_u32(&mut reader, &name)? as usize;
        let cols = read_u32(&mut reader, &name)? as usize;
        ensure!(
            rows == SIDE && cols == SIDE,
            "{name} holds {rows}x{cols} images; MNIST images are 28x28"
        );
        Ok(Self {
            reader,
            count,
            remaining: count,
            name,
        })
    }

    /// Up to `max` more images, appended to `into` as raw bytes; 0 at the end.
    pub fn read_chunk(&mut self, max: usize, into: &mut Vec<u8>) -> Result<usize> {
        let n = max.min(self.remaining);
        let start = into.len();
        into.resize(start + n * PIXELS, 0);
        self.reader
            .read_exact(&mut into[start..])
            .with_context(|| {
                format!(
                    "{} is truncated: it announces {} images but ends early",
                    self.name, self.count
                )
            })?;
        self.remaining -= n;
        Ok(n)
    }
}

/// Reads a whole IDX label file (one byte per image: small even for big datasets).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let mut reader = open(path)?;
    let magic = read_u32(&mut reader, &name)?;
    if magic != LABEL_MAGIC {
        bail!(
            "{name} is not an IDX label file (magic {magic:#010x}, expected {LABEL_MAGIC:#010x})"
        );
    }
    let count = read_u32(&mut reader, &name)? as usize;
    let mut labels = vec![0u8; count];
    reader.read_exact(&mut labels).with_context(|| {
        format!("{name} is truncated: it announces {count} labels but ends early")
    })?;
    Ok(labels)
}

/// Writes an IDX file: used by tests and by anyone converting data to MNIST's format.
pub fn write_idx(path: &Path, magic: u32, dims: &[u32], data: &[u8]) -> Result<()> {
    let mut bytes = Vec::with_capacity(8 + dims.len() * 4 + data.len());
    bytes.extend_from_slice(&magic.to_be_bytes());
    for dim in dims {
        bytes.extend_from_slice(&dim.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
