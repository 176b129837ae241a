//! The keys a call waits for: one digit to press before the code is read
//! (`require_keypress`) or two to key on the login screen (`bind_digits`).

/// The one or two digits a call waits for (a copyable value, so scripts stay `Copy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys {
    digits: [u8; 2],
    len: u8,
}

impl Keys {
    /// One digit (`require_keypress`). `None` above 9.
    pub fn one(d: u8) -> Option<Keys> {
        (d <= 9).then_some(Keys {
            digits: [d, 0],
            len: 1,
        })
    }

    /// Two digits in order (`bind_digits`). `None` when either is above 9.
    pub fn two(a: u8, b: u8) -> Option<Keys> {
        (a <= 9 && b <= 9).then_some(Keys {
            digits: [a, b],
            len: 2,
        })
    }

    /// `n` (1 or 2; other values are clamped) random digits from the thread's CSPRNG
    /// (`rand::rng`, ChaCha seeded from the OS).
    pub fn random(n: u8) -> Keys {
        Keys {
            digits: [rand::random_range(0..=9), rand::random_range(0..=9)],
            len: n.clamp(1, 2),
        }
    }

    /// The digits as text (`"47"`), for the login screen.
    pub fn to_text(&self) -> String {
        self.digits().iter().map(|d| char::from(b'0' + d)).collect()
    }

    /// Parses the text of [`Keys::to_text`]: one or two ASCII digits.
    pub fn parse(text: &str) -> Option<Keys> {
        let d: Vec<u8> = text
            .bytes()
            .map(|b| b.is_ascii_digit().then(|| b - b'0'))
            .collect::<Option<_>>()?;
        match d.as_slice() {
            [a] => Keys::one(*a),
            [a, b] => Keys::two(*a, *b),
            _ => None,
        }
    }

    /// The digits, in keying order.
    pub fn digits(&self) -> &[u8] {
        &self.digits[..usize::from(self.len)]
    }

    /// Whether `key` (a DTMF character) is the `n`th digit to key.
    pub fn matches(&self, n: usize, key: char) -> bool {
        self.digits()
            .get(n)
            .is_some_and(|&d| key.to_digit(10) == Some(u32::from(d)))
    }
}
