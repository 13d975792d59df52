//! Policy keys that older configurations set in a fetcher's own table.

/// Upgrade policy that older configurations set in a fetcher's own table
/// (`[github] checksum_required = false`). Policy now lives in the core's `[upgrade]` table;
/// a fetcher that still reads these keys reports them here, so the core can apply them for
/// one more release with a deprecation warning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LegacyPolicy {
    /// `checksum_required`, if the fetcher's table set it.
    pub checksum_required: Option<bool>,
    /// `max_size`, if the fetcher's table set it.
    pub max_size: Option<u64>,
    /// `allow_downgrade`, if the fetcher's table set it.
    pub allow_downgrade: Option<bool>,
}

impl LegacyPolicy {
    /// What a fetcher's table set of the three keys.
    pub fn new(
        checksum_required: Option<bool>,
        max_size: Option<u64>,
        allow_downgrade: Option<bool>,
    ) -> Self {
        Self {
            checksum_required,
            max_size,
            allow_downgrade,
        }
    }

    /// Whether no deprecated key was set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}
