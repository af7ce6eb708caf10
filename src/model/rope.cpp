// Rotary embedding frequencies: the default and the scaled types of config.json's rope_scaling, as
// transformers' modeling_rope_utils computes them (float32, in the same order of operations), and the
// reading of that field.
#include <cmath>

#include "peft/error.h"
#include "peft/model/blocks.h"

namespace peft::blocks {

namespace {

constexpr double kPi = 3.14159265358979323846;

// 1 / base^(arange(0, dim, 2) / dim) in float32; base a double or a 0-dim float tensor (dynamic NTK)
at::Tensor exponents(int64_t dim, const at::Device & d) {
  return at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong).device(d)).to(at::kFloat) / static_cast<double>(dim);
}

at::Tensor inv_freq(const at::Tensor & position_ids, const ModelConfig & c) {
  const RopeScaling & r = c.rope_scaling;
  const int64_t dim = c.rotary_dim();
  const at::Device dev = position_ids.device();
  at::Tensor def = 1.0 / at::pow(c.rope_theta, exponents(dim, dev));
  if (r.type == "default") return def;
  if (r.type == "linear") return def / r.factor;
  if (r.type == "dynamic") {
    // NTK-aware base for sequences past max_position_embeddings: seq_len = the largest position + 1 of
    // this call, as a tensor (a compiled graph recomputes it at each call)
    const double maxp = static_cast<double>(c.max_position_embeddings);
    at::Tensor seq = position_ids.max() + 1;
    seq = at::where(seq > c.max_position_embeddings, seq, at::full_like(seq, c.max_position_embeddings));
    const at::Tensor base = c.rope_theta * at::pow(r.factor * seq / maxp - (r.factor - 1),
                                                   static_cast<double>(dim) / static_cast<double>(dim - 2));
    return 1.0 / at::pow(base, exponents(dim, dev));
  }
  if (r.type == "longrope") {
    // LongRoPE (Phi-3 long context): the frequencies divided per dimension by short_factor, or by long_factor
    // once the call's positions pass original_max_position_embeddings (a tensor choice: a compiled graph
    // makes it at each call, as transformers' rotary embedding updates itself)
    // the factors as float32 constants made by ops (a tensor filled from data outside the dispatcher would
    // be captured by the tracer as an uninitialised one)
    const auto factors = [&](const std::vector<double> & f) {
      std::vector<at::Tensor> parts;
      for (double v : f) parts.push_back(at::full({1}, v, at::TensorOptions().dtype(at::kFloat).device(dev)));
      return at::cat(parts);
    };
    const at::Tensor shape = exponents(dim, dev);
    const at::Tensor short_inv = 1.0 / (factors(r.short_factor) * at::pow(c.rope_theta, shape));
    const at::Tensor long_inv = 1.0 / (factors(r.long_factor) * at::pow(c.rope_theta, shape));
    const at::Tensor seq = position_ids.max() + 1;
    return at::where(seq > r.original_max_position_embeddings, long_inv, short_inv);
  }
  if (r.type == "llama3") {
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
    const at::Tensor wavelen = 2 * kPi / def;
    at::Tensor f = at::where(wavelen > low_wavelen, def / r.factor, def);
    const at::Tensor smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    const at::Tensor smoothed = (1 - smooth) * f / r.factor + smooth * f;
    const at::Tensor medium = (wavelen < high_wavelen).logical_not().logical_and((wavelen > low_wavelen).logical_not());
    return at::where(medium, smoothed, f);
  }
  // yarn: interpolated (divided by factor) low frequencies, extrapolated high ones, a linear ramp between
  const double base = c.rope_theta, maxp = static_cast<double>(c.max_position_embeddings);
  const auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) * std::log(maxp / (rotations * 2 * kPi))) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(correction_dim(r.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(r.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const at::Tensor pos_freqs = at::pow(base, exponents(dim, dev));
  const at::Tensor extrapolation = 1.0 / pos_freqs, interpolation = 1.0 / (r.factor * pos_freqs);
  const at::Tensor ramp = ((at::arange(dim / 2, at::TensorOptions().dtype(at::kFloat).device(dev)) - low) / (high - low)).clamp(0, 1);
  const at::Tensor extrapolation_factor = 1 - ramp;
  return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor & position_ids, const ModelConfig & c, at::ScalarType dtype) {
  const at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv_freq(position_ids, c);  // (B, S, R/2)
  const at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);  // (B, 1, S, R), R = rotary_dim() <= Dh
  const double a = c.rope_scaling.attention_factor;
  if (a == 1.0) return {emb.cos().to(dtype), emb.sin().to(dtype)};
  return {(emb.cos() * a).to(dtype), (emb.sin() * a).to(dtype)};
}

void read_rope_scaling(const ConfigReader & r, ModelConfig & c) {
  const std::string & src = r.source();
  if (!r.has("rope_scaling") || r.json()["rope_scaling"].is_null()) return;
  const nlohmann::json & j = r.json()["rope_scaling"];
  PEFT_CHECK(j.is_object(), src, ": field 'rope_scaling' must be an object or null");
  RopeScaling & s = c.rope_scaling;
  const char * type_key = j.contains("rope_type") ? "rope_type" : "type";  // "type": the older name
  PEFT_CHECK(j.contains(type_key) && j[type_key].is_string(), src, ": rope_scaling needs a string 'rope_type'");
  s.type = j[type_key].get<std::string>();
  PEFT_CHECK(s.type == "default" || s.type == "linear" || s.type == "dynamic" || s.type == "yarn" || s.type == "llama3" ||
                 s.type == "longrope",
             src, ": rope_scaling type '", s.type, "' is not supported (default, linear, dynamic, yarn, llama3, longrope)");
  const auto number = [&](const char * k, double def, bool required) {
    if (!j.contains(k) || j[k].is_null()) {
      PEFT_CHECK(!required, src, ": rope_scaling of type '", s.type, "' needs '", k, "'");
      return def;
    }
    PEFT_CHECK(j[k].is_number(), src, ": rope_scaling field '", k, "' must be a number");
    return j[k].get<double>();
  };
  std::vector<std::string> known = {"rope_type", "type"};
  if (s.type == "longrope") {
    // transformers' _compute_longrope_parameters: the original length is config.json's own
    // original_max_position_embeddings (Phi-3), and then factor = max_position_embeddings / it
    const int64_t half = c.rotary_dim() / 2;
    for (auto [key, out] : {std::pair<const char *, std::vector<double> *>{"short_factor", &s.short_factor},
                            std::pair<const char *, std::vector<double> *>{"long_factor", &s.long_factor}}) {
      PEFT_CHECK(j.contains(key) && j[key].is_array() && static_cast<int64_t>(j[key].size()) == half, src,
                 ": rope_scaling (longrope) needs '", key, "', a list of ", half, " numbers (rotary dimensions / 2)");
      for (const auto & x : j[key]) {
        PEFT_CHECK(x.is_number() && x.get<double>() > 0, src, ": rope_scaling field '", key, "' must hold positive numbers");
        out->push_back(x.get<double>());
      }
    }
    if (r.has("original_max_position_embeddings")) {
      s.original_max_position_embeddings = r.integer("original_max_position_embeddings", 0, true);
      s.factor = static_cast<double>(c.max_position_embeddings) / static_cast<double>(s.original_max_position_embeddings);
    } else {
      s.original_max_position_embeddings = c.max_position_embeddings;
      s.factor = number("factor", 1.0, false);
    }
    const double orig = static_cast<double>(s.original_max_position_embeddings);
    s.attention_factor = number("attention_factor",
                                s.factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(s.factor) / std::log(orig)), false);
    known.insert(known.end(), {"short_factor", "long_factor", "factor", "attention_factor"});
  } else if (s.type != "default") {
    s.factor = number("factor", 1.0, true);
    PEFT_CHECK(s.factor > 0, src, ": rope_scaling field 'factor' must be positive");
    known.push_back("factor");
  }
  if (s.type == "llama3") {
    s.low_freq_factor = number("low_freq_factor", 0, true);
    s.high_freq_factor = number("high_freq_factor", 0, true);
    s.original_max_position_embeddings = static_cast<int64_t>(number("original_max_position_embeddings", 0, true));
    PEFT_CHECK(s.high_freq_factor > s.low_freq_factor && s.original_max_position_embeddings > 0, src,
               ": rope_scaling (llama3) needs high_freq_factor > low_freq_factor and original_max_position_embeddings > 0");
    known.insert(known.end(), {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
  }
  if (s.type == "yarn") {
    // transformers: beta_fast / beta_slow "or" their defaults, attention_factor 0.1 ln(factor) + 1 unless given
    s.beta_fast = number("beta_fast", 0, false);
    s.beta_slow = number("beta_slow", 0, false);
    if (s.beta_fast == 0) s.beta_fast = 32;
    if (s.beta_slow == 0) s.beta_slow = 1;
    s.attention_factor = number("attention_factor", 0.1 * std::log(s.factor) + 1.0, false);
    known.insert(known.end(), {"beta_fast", "beta_slow", "attention_factor"});
  }
  // fields that change the frequencies in some transformers versions (yarn's mscale, truncate,
  // original_max_position_embeddings; dynamic's original_max_position_embeddings) are refused, not ignored
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool ok = false;
    for (const auto & k : known) ok = ok || it.key() == k;
    PEFT_CHECK(ok, src, ": rope_scaling field '", it.key(), "' is not supported for type '", s.type, "'");
  }
}

}  // namespace peft::blocks
