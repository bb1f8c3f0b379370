//! Wire-level filtering against prost decode → clear → encode, on realistic payloads, and NISS
//! validation. Run with `cargo bench --bench filter`.

use std::hint::black_box;

use bcss_domain::{Flow, Niss};
use bcss_policy::Policy;
use bcss_proto::flows::v1 as f;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use time::macros::date;

/// The hub's allocator (`src/main.rs`): the benches measure what the binary runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn policy() -> Policy {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    Policy::load_files(
        &config.join("institutions.toml"),
        &config.join("quality_codes.toml"),
        &config.join("deliberations"),
    )
    .unwrap()
}

/// The prost baseline for 10/059: decode, clear what the deliberation does not grant, encode.
fn prost_10_059(bytes: &[u8]) -> Vec<u8> {
    let mut dmfa = f::Dmfa::decode(bytes).unwrap();
    if let Some(d) = dmfa.employer_declaration.as_mut() {
        d.curatorship = false;
        d.net_amount_due_cents = 0;
        d.holiday_start_date.clear();
        if let Some(p) = d.natural_person.as_mut() {
            p.birth_date.clear();
            p.birth_place.clear();
            p.sex = 0;
            p.address = None;
            p.country_code.clear();
            p.nationality.clear();
            p.oriolus_validation_code.clear();
            for line in &mut p.worker_lines {
                line.frontier_worker = false;
                line.work_accident_allowances.clear();
                for o in &mut line.occupations {
                    o.joint_committee.clear();
                    o.pay_method.clear();
                    o.function_number.clear();
                    o.personnel_class.clear();
                    o.days_justification.clear();
                    o.local_unit_id.clear();
                    for s in &mut o.services {
                        s.hours_hundredths = 0;
                    }
                    for r in &mut o.remunerations {
                        r.yearly_percentage_hundredths = 0;
                    }
                }
            }
        }
    }
    dmfa.encode_to_vec()
}

fn filtering(c: &mut Criterion) {
    let policy = policy();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let niss = Niss::parse("85073003328").unwrap();
    let dmfa = bcss_sim::payloads::dmfa(&mut rng, niss, 2025, 2, true).encode_to_vec();
    let dimona =
        bcss_sim::payloads::dimona(&mut rng, niss, date!(2025 - 05 - 01), None).encode_to_vec();
    let a052 = bcss_sim::payloads::a052(
        &mut rng,
        niss,
        "100",
        (date!(2025 - 01 - 01), date!(2025 - 06 - 30)),
    )
    .encode_to_vec();
    // A larger declaration: five occupations (the generator draws one to three), each with
    // its services, remunerations and public-sector blocks.
    let dmfa5 = {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut declaration = bcss_sim::payloads::dmfa(&mut rng, niss, 2025, 2, true);
        let occupations = |d: &mut f::Dmfa| {
            let person = d.employer_declaration.as_mut()?.natural_person.as_mut()?;
            Some(std::mem::take(
                &mut person.worker_lines.first_mut()?.occupations,
            ))
        };
        let mut all = occupations(&mut declaration).unwrap();
        while all.len() < 5 {
            let mut more = bcss_sim::payloads::dmfa(&mut rng, niss, 2025, 2, true);
            all.extend(occupations(&mut more).unwrap());
        }
        all.truncate(5);
        for (number, occupation) in all.iter_mut().enumerate() {
            occupation.occupation_number = number as u32 + 1;
        }
        let person = declaration
            .employer_declaration
            .as_mut()
            .and_then(|d| d.natural_person.as_mut())
            .unwrap();
        person.worker_lines[0].occupations = all;
        declaration.encode_to_vec()
    };
    let cases = [
        ("DmfA under 10/059", "10/059", Flow::Dmfa, &dmfa),
        (
            "DmfA (5 occupations) under 10/059",
            "10/059",
            Flow::Dmfa,
            &dmfa5,
        ),
        ("Dimona under 19/010", "19/010", Flow::Dimona, &dimona),
        ("A052 under 20/130", "20/130", Flow::A052, &a052),
    ];
    let mut group = c.benchmark_group("filter");
    for (name, deliberation, flow, bytes) in cases {
        let grant = policy
            .grant(policy.deliberation(deliberation).unwrap(), flow)
            .unwrap();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut out = Vec::with_capacity(bytes.len());
        group.bench_function(format!("wire/{name}"), |b| {
            b.iter(|| {
                out.clear();
                bcss_wire::filter_to_vec(&grant.tree, black_box(bytes), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    group.throughput(Throughput::Bytes(dmfa.len() as u64));
    group.bench_function("prost/DmfA under 10/059", |b| {
        b.iter(|| black_box(prost_10_059(black_box(&dmfa))))
    });
    group.throughput(Throughput::Bytes(dmfa5.len() as u64));
    group.bench_function("prost/DmfA (5 occupations) under 10/059", |b| {
        b.iter(|| black_box(prost_10_059(black_box(&dmfa5))))
    });
    group.finish();

    let schema = policy.schema().flow(Flow::Dmfa);
    c.bench_function("scan/DmfA (validate + find NISS)", |b| {
        b.iter(|| {
            black_box(
                bcss_wire::scan(&schema.tree, &schema.niss_path, black_box(&dmfa))
                    .unwrap()
                    .len(),
            )
        })
    });
    c.bench_function("niss/parse", |b| {
        b.iter(|| black_box(Niss::parse(black_box("85073003328"))))
    });
}

criterion_group!(benches, filtering);
criterion_main!(benches);
