//! Finding a device by name and choosing the stream configuration.

use cpal::traits::{DeviceTrait, HostTrait};
use cpal::{SampleFormat, SupportedStreamConfig, SupportedStreamConfigRange};
use thiserror::Error;

/// The pipeline's native rate.
pub const PIPELINE_RATE: u32 = 48_000;

/// Capture or playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Microphone.
    Capture,
    /// Speaker.
    Playback,
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dir::Capture => "capture",
            Dir::Playback => "playback",
        })
    }
}

/// Open device `name` for `dir`: find it, choose its configuration,
/// publish its rate in `rate`, build the stream for the device's sample
/// format with `build` (`None`: a format `build` does not handle), and
/// start it.
pub fn open_stream(
    name: Option<&str>,
    dir: Dir,
    rate: &std::sync::atomic::AtomicU32,
    build: impl FnOnce(
        &cpal::Device,
        &SupportedStreamConfig,
    ) -> Option<Result<cpal::Stream, cpal::Error>>,
) -> Result<cpal::Stream, DeviceError> {
    use cpal::traits::StreamTrait as _;
    let dev = find(name, dir)?;
    let cfg = choose_config(&dev, dir)?;
    let dev_name = dev.to_string();
    let backend = |source| DeviceError::Backend {
        dir,
        name: dev_name.clone(),
        source,
    };
    rate.store(cfg.sample_rate(), std::sync::atomic::Ordering::Relaxed);
    let stream = build(&dev, &cfg)
        .ok_or_else(|| DeviceError::NoConfig {
            dir,
            name: dev_name.clone(),
            reason: format!("sample format {} is not supported", cfg.sample_format()),
        })?
        .map_err(backend)?;
    stream.play().map_err(backend)?;
    let (rate, channels, format) = (cfg.sample_rate(), cfg.channels(), cfg.sample_format());
    match dir {
        Dir::Capture => {
            tracing::info!(device = %dev_name, rate, channels, %format, "capture device open")
        }
        Dir::Playback => {
            tracing::info!(device = %dev_name, rate, channels, %format, "playback device open")
        }
    }
    Ok(stream)
}

/// Why a device could not be opened.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// No device of that name; lists the ones that exist.
    #[error("{dir} device `{name}` not found; available {dir} devices: {available}")]
    NotFound {
        /// Capture or playback.
        dir: Dir,
        /// The name asked for.
        name: String,
        /// Comma-separated ids of the devices present.
        available: String,
    },
    /// No default device.
    #[error(
        "no default {0} device; set `{0}.device` in the config (see `voxgate run --list-devices`)"
    )]
    NoDefault(Dir),
    /// The device offers no usable configuration.
    #[error("{dir} device `{name}` offers no usable stream format: {reason}")]
    NoConfig {
        /// Capture or playback.
        dir: Dir,
        /// Device name.
        name: String,
        /// Backend detail.
        reason: String,
    },
    /// The backend refused to build or start the stream.
    #[error("{dir} device `{name}`: {source}")]
    Backend {
        /// Capture or playback.
        dir: Dir,
        /// Device name.
        name: String,
        /// The cpal error.
        source: cpal::Error,
    },
}

fn supports(d: &cpal::Device, dir: Dir) -> bool {
    match dir {
        Dir::Capture => d.supports_input(),
        Dir::Playback => d.supports_output(),
    }
}

fn id_of(d: &cpal::Device) -> String {
    d.id().map(|i| i.id().to_string()).unwrap_or_default()
}

/// Ids and descriptions of the devices usable in `dir`.
pub fn list(dir: Dir) -> Vec<(String, String)> {
    quietly(|| {
        let host = cpal::default_host();
        let Ok(devices) = host.devices() else {
            return Vec::new();
        };
        devices
            .filter(|d| supports(d, dir))
            .map(|d| {
                let desc = d.description().map(|x| x.to_string()).unwrap_or_default();
                (id_of(&d), desc.replace('\n', " / "))
            })
            .collect()
    })
}

/// Run `f` with alsa-lib's error messages on this thread kept off stderr.
///
/// Enumerating devices makes alsa-lib try every card its configuration
/// names, and on a box without a sound card (or with fewer cards than
/// `alsa.conf` expects) it prints `ALSA lib ... cannot find card '0'` lines
/// straight to stderr, in the middle of `voxgate setup`'s and `voxgate
/// check`'s output, though nothing is wrong: the list is just shorter.
/// alsa-lib's thread-local error handler (`snd_lib_error_set_local`,
/// through the `alsa` crate cpal links) takes them into a buffer instead;
/// they are logged at debug level. What fails is still reported through
/// the results (no device, an open that fails). The handler stays on the
/// thread afterwards (the next call replaces it): only the listing
/// commands call this, never the daemon's audio threads.
pub fn quietly<T>(f: impl FnOnce() -> T) -> T {
    let buffer = alsa::Output::local_error_handler().ok();
    let v = f();
    if let Some(b) = buffer {
        let text = b.borrow().to_string();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(message = line, "alsa-lib");
        }
    }
    v
}

/// Find a device by ALSA PCM id (e.g. `plughw:CARD=1,DEV=0`, `voxcap`) or by
/// its description name; `None` selects the default device.
pub fn find(name: Option<&str>, dir: Dir) -> Result<cpal::Device, DeviceError> {
    let host = cpal::default_host();
    let Some(name) = name else {
        let d = match dir {
            Dir::Capture => host.default_input_device(),
            Dir::Playback => host.default_output_device(),
        };
        return d.ok_or(DeviceError::NoDefault(dir));
    };
    let devices: Vec<cpal::Device> = host
        .devices()
        .map(|d| d.filter(|d| supports(d, dir)).collect())
        .unwrap_or_default();
    if let Some(d) = devices.iter().find(|d| id_of(d) == name) {
        return Ok(d.clone());
    }
    if let Some(d) = devices.iter().find(|d| d.to_string() == name) {
        return Ok(d.clone());
    }
    let available = devices.iter().map(id_of).collect::<Vec<_>>().join(", ");
    Err(DeviceError::NotFound {
        dir,
        name: name.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available
        },
    })
}

fn format_rank(f: SampleFormat) -> u8 {
    match f {
        // I16 first: the native format of most codecs and USB microphones,
        // and the only one ALSA's file plugin passes through bit-exactly.
        SampleFormat::I16 => 0,
        SampleFormat::F32 => 1,
        SampleFormat::I32 => 2,
        SampleFormat::F64 => 3,
        SampleFormat::U16 => 4,
        SampleFormat::I8 | SampleFormat::U8 => 5,
        _ => 9,
    }
}

/// Pick the configuration closest to 48 kHz mono in a format we convert cheaply.
pub fn choose_config(
    device: &cpal::Device,
    dir: Dir,
) -> Result<SupportedStreamConfig, DeviceError> {
    let name = device.to_string();
    let ranges: Vec<SupportedStreamConfigRange> = match dir {
        Dir::Capture => device.supported_input_configs().map(|i| i.collect()),
        Dir::Playback => device.supported_output_configs().map(|i| i.collect()),
    }
    .map_err(|e| DeviceError::NoConfig {
        dir,
        name: name.clone(),
        reason: e.to_string(),
    })?;
    let best = ranges
        .into_iter()
        .filter(|r| format_rank(r.sample_format()) < 9)
        .min_by_key(|r| {
            let has48 =
                r.min_sample_rate() <= PIPELINE_RATE && PIPELINE_RATE <= r.max_sample_rate();
            (
                !has48,
                r.channels() != 1,
                format_rank(r.sample_format()),
                r.channels(),
            )
        })
        .ok_or_else(|| DeviceError::NoConfig {
            dir,
            name: name.clone(),
            reason: "no supported sample format".into(),
        })?;
    let rate = PIPELINE_RATE.clamp(best.min_sample_rate(), best.max_sample_rate());
    Ok(best.with_sample_rate(rate))
}

/// The stream configuration to ask for: the chosen format with a fixed
/// period of `period_ms` (clamped to what the device reports), so that no
/// callback delivers more than a few milliseconds at once. ALSA's default
/// for some plugins is a multi-second buffer.
pub fn stream_config(cfg: &SupportedStreamConfig, period_ms: u32) -> cpal::StreamConfig {
    let want = cfg.sample_rate() * period_ms / 1000;
    let mut sc = cfg.config();
    sc.buffer_size = match *cfg.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max } => {
            cpal::BufferSize::Fixed(want.clamp(min, max.max(min)))
        }
        cpal::SupportedBufferSize::Unknown => cpal::BufferSize::Fixed(want),
    };
    sc
}
