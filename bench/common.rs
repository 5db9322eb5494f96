//! What every bench's `main` shares.

/// `criterion_main!`, plus the bundled font: criterion draws its HTML report charts with
/// plotters, which in this build (ab_glyph, no fontconfig) has only the fonts we register.
#[macro_export]
macro_rules! main_with_bundled_font {
    ($group:ident) => {
        fn main() {
            if let Err(e) = ringbench::report::charts::register_bundled_font() {
                eprintln!("criterion charts will fail: {e:#}");
            }
            $group();
            criterion::Criterion::default().configure_from_args().final_summary();
        }
    };
}
