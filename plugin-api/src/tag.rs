//! Open tags: the closed-looking sets of the API that grow in minor releases (object kinds,
//! notifier kinds). A tag is a `#[repr(transparent)]` `u16` with one associated constant per
//! known value, so a newer minor adds a constant without changing the type's layout, and code
//! matching on it keeps a `_` arm for values it was not built with.

/// Defines an open tag type: `struct NAME(u16)` with a constant per value, `ALL` (every value
/// this version knows, in tag order), `index()` (a dense index into `ALL`), `name()` and
/// optionally `plural()`; `Debug` and `Display` print the name.
#[doc(hidden)]
#[macro_export]
macro_rules! open_tag {
    (
        $(#[$meta:meta])*
        pub struct $ty:ident;
        $(#[$nmeta:meta])*
        names($name_fn:ident, $plural_fn:ident) {
            $( $(#[$vmeta:meta])* $n:literal => $v:ident($name:literal, $plural:literal) ),* $(,)?
        }
    ) => {
        $crate::open_tag! {
            $(#[$meta])*
            pub struct $ty;
            $(#[$nmeta])*
            names($name_fn) {
                $( $(#[$vmeta])* $n => $v($name) ),*
            }
        }

        impl $ty {
            #[doc = concat!("Plural of [`Self::", stringify!($name_fn), "`].")]
            pub fn $plural_fn(self) -> &'static str {
                match self.0 {
                    $($n => $plural,)*
                    _ => "unknown",
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $ty:ident;
        $(#[$nmeta:meta])*
        names($name_fn:ident) {
            $( $(#[$vmeta:meta])* $n:literal => $v:ident($name:literal) ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(
            $crate::abi_stable::StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
        )]
        pub struct $ty(u16);

        #[allow(non_upper_case_globals)]
        impl $ty {
            $( $(#[$vmeta])* pub const $v: $ty = $ty($n); )*

            /// Every value this version of the API knows, in tag order.
            pub const ALL: &'static [$ty] = &[$($ty::$v),*];

            /// The value with this raw tag (which may be one this version does not know).
            pub const fn from_raw(raw: u16) -> $ty {
                $ty(raw)
            }

            /// The raw tag.
            pub const fn raw(self) -> u16 {
                self.0
            }

            /// The position of a known tag in [`Self::ALL`] (tags are numbered from 0 without
            /// gaps), for per-kind arrays: `[0u64; KIND::ALL.len()]`. For a tag this version
            /// does not know, a number `>= ALL.len()`.
            pub const fn index(self) -> usize {
                self.0 as usize
            }

            /// Whether this version of the API knows the tag.
            pub const fn is_known(self) -> bool {
                (self.0 as usize) < Self::ALL.len()
            }

            $(#[$nmeta])*
            pub fn $name_fn(self) -> &'static str {
                match self.0 {
                    $($n => $name,)*
                    _ => "unknown",
                }
            }

        }

        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                if self.is_known() {
                    f.write_str(self.$name_fn())
                } else {
                    write!(f, "{}({})", stringify!($ty), self.0)
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Debug::fmt(self, f)
            }
        }
    };
}
