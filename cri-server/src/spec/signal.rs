//! Stop signals: the CRI `Signal` enum (ContainerConfig.stop_signal, ContainerStatus.stop_signal)
//! to and from signal numbers, and an image's `StopSignal` string.
//!
//! The signal StopContainer sends is the container config's `stop_signal`, else the image's
//! `StopSignal`, else SIGTERM (as containerd and CRI-O decide it).

use proto::cri::Signal as CriSignal;

/// `SIGRTMIN` and `SIGRTMAX` of this libc (glibc reserves the first real-time signals).
fn rt_range() -> (i32, i32) {
    (libc::SIGRTMIN(), libc::SIGRTMAX())
}

/// The signal number of a standard signal name (`SIGTERM`), including the aliases the CRI enum
/// lists (`SIGCLD`, `SIGPOLL`, `SIGIOT`) and the real-time forms (`SIGRTMIN`, `SIGRTMIN+3`,
/// `SIGRTMINPLUS3`, `SIGRTMAX-2`, `SIGRTMAXMINUS2`).
pub fn number_of(name: &str) -> Option<i32> {
    let (min, max) = rt_range();
    // `rest` after SIGRTMIN/SIGRTMAX: empty, or the offset after `word` or `sym`.
    let rt = |rest: &str, base: i32, sign: i32, word: &str, sym: &str| -> Option<i32> {
        let off = match rest {
            "" => 0,
            _ => rest.strip_prefix(word).or_else(|| rest.strip_prefix(sym))?.parse::<i32>().ok()?,
        };
        let n = base.checked_add(sign.checked_mul(off)?)?;
        (min..=max).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        return rt(rest, min, 1, "PLUS", "+");
    }
    if let Some(rest) = name.strip_prefix("SIGRTMAX") {
        return rt(rest, max, -1, "MINUS", "-");
    }
    match name {
        "SIGCLD" => Some(libc::SIGCHLD),
        "SIGPOLL" => Some(libc::SIGIO),
        "SIGIOT" => Some(libc::SIGABRT),
        _ => name.parse::<nix::sys::signal::Signal>().ok().map(|s| s as i32),
    }
}

/// The signal number a CRI `Signal` value names; `None` for RUNTIME_DEFAULT and for values
/// outside the enum.
pub fn from_cri(value: i32) -> Option<i32> {
    match CriSignal::try_from(value) {
        Ok(CriSignal::RuntimeDefault) | Err(_) => None,
        Ok(s) => number_of(s.as_str_name()),
    }
}

/// Whether a CRI `Signal` value is one this node can send (RUNTIME_DEFAULT counts as valid).
pub fn valid_cri(value: i32) -> bool {
    value == CriSignal::RuntimeDefault as i32 || from_cri(value).is_some()
}

/// The CRI `Signal` value of a signal number (RUNTIME_DEFAULT when it has no CRI name).
pub fn to_cri(number: i32) -> i32 {
    let (min, max) = rt_range();
    let name = if (min..=max).contains(&number) {
        let from_min = number - min;
        let from_max = max - number;
        if from_min == 0 {
            "SIGRTMIN".to_string()
        } else if from_max == 0 {
            "SIGRTMAX".to_string()
        } else if from_min <= 15 {
            format!("SIGRTMINPLUS{from_min}")
        } else {
            format!("SIGRTMAXMINUS{from_max}")
        }
    } else {
        match nix::sys::signal::Signal::try_from(number) {
            Ok(s) => s.as_str().to_string(),
            Err(_) => return CriSignal::RuntimeDefault as i32,
        }
    };
    CriSignal::from_str_name(&name).map(|s| s as i32).unwrap_or(CriSignal::RuntimeDefault as i32)
}

/// Parses an image's StopSignal ("SIGQUIT", "QUIT", "3", "SIGRTMIN+1"); `None` when empty or
/// unknown.
pub fn parse_image_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=rt_range().1).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    number_of(&name)
}

/// The signal StopContainer sends: the config's, else the image's, else SIGTERM.
pub fn stop_signal(config_signal: i32, image_signal: &str) -> i32 {
    from_cri(config_signal).or_else(|| parse_image_signal(image_signal)).unwrap_or(libc::SIGTERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_round_trip() {
        for v in 1..=65 {
            let n = from_cri(v).unwrap_or_else(|| panic!("CRI signal {v} has no number"));
            let back = to_cri(n);
            // aliases map back to their canonical name
            let alias =
                matches!(CriSignal::try_from(v).unwrap(), CriSignal::Sigcld | CriSignal::Sigpoll | CriSignal::Sigiot);
            if !alias {
                assert_eq!(back, v, "{v} -> {n} -> {back}");
            }
        }
        assert_eq!(from_cri(0), None);
        assert_eq!(from_cri(999), None);
        assert!(valid_cri(0) && !valid_cri(-1));
        assert_eq!(from_cri(CriSignal::Sigterm as i32), Some(libc::SIGTERM));
        assert_eq!(from_cri(CriSignal::Sigrtminplus2 as i32), Some(libc::SIGRTMIN() + 2));
        assert_eq!(from_cri(CriSignal::Sigrtmax as i32), Some(libc::SIGRTMAX()));
    }

    #[test]
    fn image_signals_and_precedence() {
        assert_eq!(parse_image_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_image_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_image_signal("9"), Some(9));
        assert_eq!(parse_image_signal("SIGRTMIN+1"), Some(libc::SIGRTMIN() + 1));
        assert_eq!(parse_image_signal("SIGRTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(parse_image_signal("SIGNOPE"), None);
        assert_eq!(parse_image_signal("0"), None);
        assert_eq!(parse_image_signal(""), None);
        assert_eq!(stop_signal(0, ""), libc::SIGTERM);
        assert_eq!(stop_signal(0, "SIGINT"), libc::SIGINT);
        assert_eq!(stop_signal(CriSignal::Sigusr1 as i32, "SIGINT"), libc::SIGUSR1);
        assert_eq!(to_cri(libc::SIGTERM), CriSignal::Sigterm as i32);
        assert_eq!(to_cri(0), CriSignal::RuntimeDefault as i32);
    }
}
