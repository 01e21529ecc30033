//! Reading the METADATA file out of a wheel (a zip archive; PEP 427), for PEP 658 `.metadata`.
//! Reads only the central directory and one entry, with a bound on the inflated size.

use std::io::{Read, Seek, SeekFrom};

use crate::policy::ProjectName;

/// Larger METADATA files than this are refused (real ones are kilobytes; a long description
/// makes a few hundred).
pub const MAX_METADATA_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WheelError {
    #[error("not a readable zip archive: {0}")]
    Zip(&'static str),
    #[error("the wheel has no {0}.dist-info/METADATA")]
    NoMetadata(String),
    #[error("the wheel has {0} dist-info/METADATA files for its own name and version")]
    Ambiguous(usize),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Extracts `{name}-{version}.dist-info/METADATA` of the wheel's own name and version (PEP 427
/// §"The .dist-info directory"): another project's or another version's dist-info in the same
/// zip is not its metadata, and a wheel holding two for itself is refused as ambiguous.
pub fn extract_metadata<R: Read + Seek>(
    mut r: R,
    project: &ProjectName,
    version: &pep440_rs::Version,
) -> Result<Vec<u8>, WheelError> {
    let len = r.seek(SeekFrom::End(0))?;
    // The end-of-central-directory record is in the last 22 + 65535 bytes (APPNOTE 4.3.16).
    let tail_len = len.min(22 + 65_535);
    r.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    r.read_exact(&mut tail)?;
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&tail, i) == Some(0x0605_4b50))
        .ok_or(WheelError::Zip("no end of central directory"))?;
    let cd_size = u32_at(&tail, eocd + 12).ok_or(WheelError::Zip("short record"))? as u64;
    let cd_offset = u32_at(&tail, eocd + 16).ok_or(WheelError::Zip("short record"))? as u64;
    if cd_offset == 0xFFFF_FFFF || cd_offset + cd_size > len || cd_size > 64 << 20 {
        return Err(WheelError::Zip(
            "central directory out of range (zip64 is not supported)",
        ));
    }
    r.seek(SeekFrom::Start(cd_offset))?;
    let mut cd = vec![0u8; cd_size as usize];
    r.read_exact(&mut cd)?;

    let mut i = 0;
    let mut found = None;
    let mut matches = 0usize;
    while i + 46 <= cd.len() && u32_at(&cd, i) == Some(0x0201_4b50) {
        let method = u16_at(&cd, i + 10).unwrap_or(0);
        let csize = u32_at(&cd, i + 20).unwrap_or(0) as u64;
        let usize_ = u32_at(&cd, i + 24).unwrap_or(0) as u64;
        let n = u16_at(&cd, i + 28).unwrap_or(0) as usize;
        let e = u16_at(&cd, i + 30).unwrap_or(0) as usize;
        let c = u16_at(&cd, i + 32).unwrap_or(0) as usize;
        let local = u32_at(&cd, i + 42).unwrap_or(0) as u64;
        let name = cd
            .get(i + 46..i + 46 + n)
            .ok_or(WheelError::Zip("truncated entry"))?;
        if let Ok(name) = std::str::from_utf8(name) {
            if let Some(dir) = name.strip_suffix(".dist-info/METADATA") {
                // The dist-info directory is `{name}-{version}`: this project, this version.
                let own = !dir.contains('/')
                    && dir.rsplit_once('-').is_some_and(|(n, v)| {
                        ProjectName::parse(n).is_ok_and(|p| &p == project)
                            && v.parse::<pep440_rs::Version>().is_ok_and(|v| &v == version)
                    });
                if own {
                    matches += 1;
                    found = Some((method, csize, usize_, local));
                }
            }
        }
        i += 46 + n + e + c;
    }
    if matches > 1 {
        return Err(WheelError::Ambiguous(matches));
    }
    let (method, csize, usize_, local) =
        found.ok_or_else(|| WheelError::NoMetadata(format!("{project}-{version}")))?;
    if usize_ > MAX_METADATA_BYTES || csize > len {
        return Err(WheelError::Zip("METADATA entry too large"));
    }
    r.seek(SeekFrom::Start(local))?;
    let mut lh = [0u8; 30];
    r.read_exact(&mut lh)?;
    if u32_at(&lh, 0) != Some(0x0403_4b50) {
        return Err(WheelError::Zip("bad local header"));
    }
    let skip = u16_at(&lh, 26).unwrap_or(0) as i64 + u16_at(&lh, 28).unwrap_or(0) as i64;
    r.seek(SeekFrom::Current(skip))?;
    let raw = (&mut r).take(csize);
    let mut out = Vec::with_capacity(usize_ as usize);
    // Never more than the directory declares (and one byte to notice a lie): a zip bomb that
    // inflates past its declared size costs no more than that.
    match method {
        0 => {
            raw.take(usize_ + 1).read_to_end(&mut out)?;
        }
        8 => {
            flate2::read::DeflateDecoder::new(raw)
                .take(usize_ + 1)
                .read_to_end(&mut out)?;
        }
        _ => return Err(WheelError::Zip("unsupported compression method")),
    }
    if out.len() as u64 != usize_ {
        return Err(WheelError::Zip(
            "METADATA size does not match the directory",
        ));
    }
    Ok(out)
}
