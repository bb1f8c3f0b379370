//! Realistic flow messages for the simulated network: every block and field set, with values
//! shaped like the real declarations (NISS, enterprise numbers, joint committees, amounts in
//! cents). Deterministic for a given random generator.

use bcss_domain::Niss;
use bcss_proto::flows::v1 as f;
use rand::seq::IndexedRandom;
use rand::{Rng, RngExt};
use time::Date;

const LAST_NAMES: &[&str] = &[
    "Peeters", "Janssens", "Maes", "Dubois", "Lambert", "Dupont", "Claes", "Willems", "Goossens",
    "Lemaire", "Martin", "Jacobs", "Mertens", "Wouters", "Leclercq",
];
const FIRST_NAMES: &[&str] = &[
    "Marie", "Lucas", "Emma", "Noah", "Louise", "Arthur", "Olivia", "Jules", "Elise", "Victor",
    "Nathalie", "Koen", "Sofie", "Mohamed", "Fatima",
];
const MUNICIPALITIES: &[(&str, &str)] = &[
    ("1000", "Bruxelles"),
    ("2000", "Antwerpen"),
    ("9000", "Gent"),
    ("6000", "Charleroi"),
    ("4000", "Liège"),
    ("8000", "Brugge"),
    ("5000", "Namur"),
    ("3000", "Leuven"),
    ("7000", "Mons"),
    ("9300", "Aalst"),
];
const STREETS: &[&str] = &[
    "Rue de la Loi",
    "Kerkstraat",
    "Stationsstraat",
    "Rue Haute",
    "Grote Markt",
    "Avenue Louise",
    "Dorpsstraat",
];
const JOINT_COMMITTEES: &[&str] = &[
    "100", "111", "124", "140.03", "200", "302", "304", "322", "330",
];

use bcss_domain::iso_date as date;

fn period(start: Date, end: Option<Date>) -> Option<f::Period> {
    Some(f::Period {
        start: date(start),
        end: end.map(date).unwrap_or_default(),
    })
}

fn address(rng: &mut impl Rng) -> Option<f::Address> {
    let (postal_code, municipality) = *MUNICIPALITIES.choose(rng).expect("non-empty");
    Some(f::Address {
        street: STREETS.choose(rng).expect("non-empty").to_string(),
        house_number: rng.random_range(1..240u32).to_string(),
        r#box: if rng.random_bool(0.3) {
            format!("b{}", rng.random_range(1..20u32))
        } else {
            String::new()
        },
        postal_code: postal_code.into(),
        municipality: municipality.into(),
        country_code: "150".into(),
    })
}

fn enterprise_number(rng: &mut impl Rng) -> String {
    // Belgian enterprise numbers: 0 or 1, eight digits, modulo-97 check.
    let base: u64 = rng.random_range(20_000_000..99_999_999u64);
    format!("0{base:08}{:02}", 97 - (base % 97))
}

fn birth_date(niss: Niss) -> String {
    let digits = niss.digits();
    let century = if matches!(
        niss.kind(),
        bcss_domain::NissKind::Register2000s | bcss_domain::NissKind::Bis2000s
    ) {
        "20"
    } else {
        "19"
    };
    let month = (digits[2..4].parse::<u8>().unwrap_or(0) % 20).max(1);
    let day = digits[4..6].parse::<u8>().unwrap_or(1).max(1);
    format!("{century}{}-{month:02}-{day:02}", &digits[0..2])
}

fn sex(niss: Niss) -> i32 {
    let serial: u32 = niss.digits()[6..9].parse().unwrap_or(0);
    if serial % 2 == 1 {
        f::Sex::Male as i32
    } else {
        f::Sex::Female as i32
    }
}

/// An A052 about `niss`: one to three risks with their payments, within `within`.
pub fn a052(rng: &mut impl Rng, niss: Niss, fund_number: &str, within: (Date, Date)) -> f::A052 {
    let (from, to) = within;
    let risks = (0..rng.random_range(1..=3))
        .map(|_| {
            let kind = rng.random_range(1..=10);
            let days = (to - from).whole_days().max(1);
            let start = from + time::Duration::days(rng.random_range(0..days));
            let end = (start + time::Duration::days(rng.random_range(7..120))).min(to);
            f::Risk {
                kind,
                social_status: rng.random_range(1..=4),
                period: period(start, Some(end)),
                closure_reason: rng.random_range(1..=5),
                incapacity_type: format!("{:02}", rng.random_range(1..=12)),
                start_situation: rng.random_range(1..=4),
                expected_delivery_date: date(end),
                actual_delivery_date: date(end),
                adoption_date: date(start),
                foster_placement_date: date(start),
                payments: (0..rng.random_range(1..=4))
                    .map(|_| f::Payment {
                        accounting_document_kind: format!("{}", rng.random_range(1..=9)),
                        worker_category: format!("{:02}", rng.random_range(1..=20)),
                        family_situation: rng.random_range(1..=4),
                        allowance_type: rng.random_range(1..=4),
                        allowance_nature: rng.random_range(1..=4),
                        period: period(start, Some(end)),
                        amount_cents: rng.random_range(2_000..250_000),
                        days_paid: rng.random_range(1..=26),
                        hours_paid_hundredths: rng.random_range(100..20_000),
                    })
                    .collect(),
            }
        })
        .collect();
    f::A052 {
        niss: niss.digits(),
        message_reference: format!("A052-{:010}", rng.random_range(0..10_000_000_000u64)),
        creation_date: date(to),
        insurance_fund_number: fund_number.into(),
        risks,
    }
}

/// A DmfA extract for `niss` for one quarter: one worker line with one to three occupations,
/// each with services and remunerations; public-sector blocks when `public_sector`.
pub fn dmfa(
    rng: &mut impl Rng,
    niss: Niss,
    year: u32,
    quarter: u32,
    public_sector: bool,
) -> f::Dmfa {
    let first_month = time::Month::try_from((quarter * 3 - 2) as u8).expect("quarter 1-4");
    let q_start = Date::from_calendar_date(year as i32, first_month, 1).expect("valid date");
    let q_end =
        Date::from_calendar_date(year as i32, first_month.nth_next(2), 28).expect("valid date");
    let occupations = (1..=rng.random_range(1..=3u32))
        .map(|number| f::Occupation {
            occupation_number: number,
            internal_occupation_number: format!("{number:04}"),
            period: period(q_start, Some(q_end)),
            joint_committee: JOINT_COMMITTEES.choose(rng).expect("non-empty").to_string(),
            days_per_week_hundredths: 500,
            worker_average_weekly_hours_hundredths: rng.random_range(1_900..3_800),
            reference_average_weekly_hours_hundredths: 3_800,
            contract_type: if rng.random_bool(0.8) {
                "0".into()
            } else {
                "1".into()
            },
            reorganisation_measure: format!("{}", rng.random_range(0..=9)),
            employment_promotion_measure: format!("{}", rng.random_range(0..=20)),
            worker_status: ["", "A", "D1", "SA"]
                .choose(rng)
                .expect("non-empty")
                .to_string(),
            pensioner: rng.random_bool(0.05),
            apprentice_type: format!("{}", rng.random_range(0..=4)),
            pay_method: format!("{}", rng.random_range(0..=4)),
            function_number: format!("{}", rng.random_range(1..=9)),
            personnel_class: format!("{}", rng.random_range(1..=4)),
            flying_personnel_class: format!("{}", rng.random_range(0..=3)),
            payment_fraction: rng.random_range(1..=2),
            days_justification: format!("{}", rng.random_range(0..=5)),
            local_unit_id: format!("2{:09}", rng.random_range(0..1_000_000_000u32)),
            services: (1..=rng.random_range(2..=5u32))
                .map(|line| f::Service {
                    line_number: line,
                    code: format!("{}", [1, 2, 3, 5, 11, 20][(line as usize) % 6]),
                    days_hundredths: rng.random_range(100..6_500),
                    hours_hundredths: rng.random_range(800..50_000),
                })
                .collect(),
            remunerations: (1..=rng.random_range(1..=4u32))
                .map(|line| f::Remuneration {
                    line_number: line,
                    code: format!("{}", [1, 2, 3, 10, 51][(line as usize) % 5]),
                    bonus_frequency_months: [0, 1, 3, 12][(line as usize) % 4],
                    yearly_percentage_hundredths: rng.random_range(0..10_000),
                    amount_cents: rng.random_range(50_000..1_500_000),
                })
                .collect(),
            public_sector_data: public_sector.then(|| f::PublicSectorData {
                institution_type: format!("{}", rng.random_range(1..=9)),
                personnel_category: format!("{}", rng.random_range(1..=5)),
                function_or_grade_name: ["attaché", "expert", "adjoint", "conseiller"]
                    .choose(rng)
                    .expect("non-empty")
                    .to_string(),
                period: period(q_start, Some(q_end)),
                language_role: rng.random_range(1..=2),
                function_nature: format!("{}", rng.random_range(1..=3)),
                function_character: format!("{}", rng.random_range(1..=3)),
                statutory_relation_end_reason: String::new(),
            }),
            scale_salaries: if public_sector {
                vec![f::ScaleSalary {
                    period: period(q_start, Some(q_end)),
                    pecuniary_seniority_date: date(
                        q_start - time::Duration::days(rng.random_range(365..9_000)),
                    ),
                    salary_scale_reference: format!(
                        "A{}{}",
                        rng.random_range(1..=5),
                        rng.random_range(1..=3)
                    ),
                    scale_salary_amount_cents: rng.random_range(2_500_000..7_000_000),
                    hours_per_week_hundredths: 3_800,
                    full_scale_hours_per_week_hundredths: 3_800,
                }]
            } else {
                Vec::new()
            },
            salary_supplements: if public_sector {
                vec![f::SalarySupplement {
                    supplement_reference: format!("S{}", rng.random_range(100..999)),
                    period: period(q_start, Some(q_end)),
                    base_amount_cents: rng.random_range(10_000..200_000),
                    percentage_hundredths: rng.random_range(100..2_500),
                    weekend_night_hours_hundredths: rng.random_range(0..4_000),
                    hours_or_services_hundredths: rng.random_range(0..4_000),
                    amount_cents: rng.random_range(5_000..100_000),
                }]
            } else {
                Vec::new()
            },
        })
        .collect();
    f::Dmfa {
        employer_declaration: Some(f::EmployerDeclaration {
            registration_number: format!("{:09}", rng.random_range(0..1_000_000_000u32)),
            previous_registration_number: format!("{:09}", rng.random_range(0..1_000_000_000u32)),
            enterprise_number: enterprise_number(rng),
            curatorship: rng.random_bool(0.02),
            year,
            quarter,
            source: if public_sector && rng.random_bool(0.5) {
                f::DmfaSource::Onssapl as i32
            } else {
                f::DmfaSource::Onss as i32
            },
            net_amount_due_cents: rng.random_range(100_000..90_000_000),
            holiday_start_date: date(q_start),
            natural_person: Some(f::NaturalPerson {
                niss: niss.digits(),
                previous_niss: String::new(),
                last_name: LAST_NAMES.choose(rng).expect("non-empty").to_string(),
                first_name: FIRST_NAMES.choose(rng).expect("non-empty").to_string(),
                birth_date: birth_date(niss),
                birth_place: MUNICIPALITIES.choose(rng).expect("non-empty").1.to_string(),
                sex: sex(niss),
                address: address(rng),
                country_code: "150".into(),
                nationality: "150".into(),
                oriolus_validation_code: format!("{}", rng.random_range(0..=3)),
                worker_lines: vec![f::WorkerLine {
                    employer_category: format!("{:03}", rng.random_range(0..=999)),
                    worker_code: ["015", "035", "495", "675"]
                        .choose(rng)
                        .expect("non-empty")
                        .to_string(),
                    quarter_start_date: date(q_start),
                    quarter_end_date: date(q_end),
                    frontier_worker: rng.random_bool(0.03),
                    local_unit_id: format!("2{:09}", rng.random_range(0..1_000_000_000u32)),
                    occupations,
                    work_accident_allowances: if rng.random_bool(0.2) {
                        vec![f::WorkAccidentAllowance {
                            nature: format!("{}", rng.random_range(1..=3)),
                            incapacity_rate_hundredths: rng.random_range(100..10_000),
                            amount_cents: rng.random_range(10_000..300_000),
                        }]
                    } else {
                        Vec::new()
                    },
                }],
            }),
        }),
    }
}

/// A Dimona entry (or exit) for `niss` starting on `entry`.
pub fn dimona(rng: &mut impl Rng, niss: Niss, entry: Date, exit: Option<Date>) -> f::Dimona {
    let interim = rng.random_bool(0.2);
    f::Dimona {
        dimona_number: format!("{:012}", rng.random_range(0..1_000_000_000_000u64)),
        declaration_reference: format!("DIM-{:08}", rng.random_range(0..100_000_000u32)),
        declaration_kind: if exit.is_some() {
            f::DimonaDeclarationKind::Exit as i32
        } else {
            f::DimonaDeclarationKind::Entry as i32
        },
        employer: Some(f::DimonaEmployer {
            registration_number: format!("{:09}", rng.random_range(0..1_000_000_000u32)),
            registration_number_type: "ONSS".into(),
            enterprise_number: enterprise_number(rng),
            natural_person_niss: String::new(),
            legal_name: format!(
                "{} {}",
                LAST_NAMES.choose(rng).expect("non-empty"),
                ["SA", "SRL", "BV", "NV"].choose(rng).expect("non-empty")
            ),
            last_name: String::new(),
            first_name: String::new(),
            address: address(rng),
            language: rng.random_range(1..=2),
            legal_form: ["014", "015", "610"]
                .choose(rng)
                .expect("non-empty")
                .to_string(),
            social_purpose: "commerce".into(),
            employer_category: format!("{:03}", rng.random_range(0..=999)),
            social_secretariat_id: format!("{:03}", rng.random_range(100..999)),
            social_secretariat_office_id: format!("{:02}", rng.random_range(1..99)),
            social_secretariat_affiliation_number: format!(
                "{:07}",
                rng.random_range(0..10_000_000u32)
            ),
        }),
        temp_agency_user: interim.then(|| f::TemporaryWorkUser {
            registration_number: format!("{:09}", rng.random_range(0..1_000_000_000u32)),
            registration_number_type: "ONSS".into(),
            enterprise_number: enterprise_number(rng),
            legal_name: format!("{} Logistics", LAST_NAMES.choose(rng).expect("non-empty")),
            last_name: String::new(),
            first_name: String::new(),
            address: address(rng),
        }),
        worker: Some(f::DimonaWorker {
            niss: niss.digits(),
            oriolus_validation_code: format!("{}", rng.random_range(0..=3)),
            last_name: LAST_NAMES.choose(rng).expect("non-empty").to_string(),
            first_name: FIRST_NAMES.choose(rng).expect("non-empty").to_string(),
            birth_date: birth_date(niss),
            sex: sex(niss),
            country_code: "150".into(),
            student_address: address(rng),
            student_country_code: "150".into(),
        }),
        occupation: Some(f::DimonaOccupation {
            place_of_work: address(rng),
            partial_entity: rng.random_bool(0.1),
            establishment_unit_number: format!("2{:09}", rng.random_range(0..1_000_000_000u32)),
            federated_entity_number: format!("{}", rng.random_range(1..=3)),
            entry_date: date(entry),
            exit_date: exit.map(date).unwrap_or_default(),
            joint_committee: JOINT_COMMITTEES.choose(rng).expect("non-empty").to_string(),
            worker_type: rng.random_range(1..=6),
            horeca_service_type: if rng.random_bool(0.1) {
                "EXT".into()
            } else {
                String::new()
            },
            student_contingent_days: rng.random_range(0..=50),
            construction_card_number: if rng.random_bool(0.1) {
                format!("C32A-{:06}", rng.random_range(0..1_000_000u32))
            } else {
                String::new()
            },
        }),
    }
}
