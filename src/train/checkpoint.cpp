// Checkpoints: DIR/checkpoint-<step>/ holds the model's files (a PEFT adapter folder), the optimizer's
// state (optimizer.pt, LibTorch's archive), the RNG state (rng_state.safetensors) and
// trainer_state.json (the step, what must match to resume, and the options of the run). Written whole
// by FolderWriter; resuming restores all of it, so the run continues as if never stopped.
#include <dirent.h>
#include <sys/stat.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "trainer-impl.h"

namespace peft {

namespace {

constexpr const char * kState = "trainer_state.json";

bool is_file(const std::string & p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// checkpoint-<step> folders of `dir` that are complete, by step
std::vector<std::pair<int64_t, std::string>> checkpoints(const std::string & dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  DIR * d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  const std::string prefix = "checkpoint-";
  while (dirent * e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0 || name.size() == prefix.size()) continue;
    const std::string num = name.substr(prefix.size());
    if (num.find_first_not_of("0123456789") != std::string::npos || num.size() > 15) continue;
    const std::string path = dir + "/" + name;
    if (is_file(path + "/" + kState)) out.emplace_back(std::stoll(num), path);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::string latest_checkpoint(const std::string & dir) {
  auto all = checkpoints(dir);
  return all.empty() ? "" : all.back().second;
}

nlohmann::json Trainer::Impl::fingerprint(const SequenceSet & data) const {
  int64_t numel = 0;
  for (const auto & p : params) numel += p.numel();
  return {{"batch_size", opts.batch_size},
          {"gradient_accumulation_steps", opts.gradient_accumulation_steps},
          {"steps", opts.steps},
          {"epochs", opts.epochs},
          {"optimizer", opts.optimizer.name()},
          {"lr", opts.lr},
          {"lr_scheduler", opts.lr_scheduler.name()},
          {"warmup_steps", opts.warmup_steps},
          {"shuffle", opts.shuffle},
          {"world_size", opts.world_size},
          {"seed", opts.seed},
          {"max_length", data.max_length()},
          {"layout", choice_name(data.layout())},
          {"sequences", data.size()},
          {"data_key", str(std::hex, data.data().key())},
          {"trainable_tensors", params.size()},
          {"trainable_numel", numel}};
}

std::string Trainer::save_checkpoint(const SequenceSet & data) {
  auto & I = *impl_;
  PEFT_CHECK(!I.opts.checkpoint_dir.empty(), "no checkpoint folder configured");
  PEFT_CHECK(I.cb.save_model != nullptr, "checkpoints need the save_model callback (the model's files)");
  const std::string dir = str(I.opts.checkpoint_dir, "/checkpoint-", I.step);
  if (::mkdir(I.opts.checkpoint_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    fail(str("cannot create the checkpoint folder '", I.opts.checkpoint_dir, "': ", std::strerror(errno)));
  }
  try {
    FolderWriter w(dir);
    I.cb.save_model(w);
    // the optimizer's archive is built in memory and written like every other file: LibTorch's
    // file writer aborts the process (an exception from a destructor) when a write fails
    std::ostringstream optimizer_bytes;
    {
      torch::serialize::OutputArchive archive;
      I.optim->save(archive);
      archive.save_to(optimizer_bytes);
    }
    write_file_atomic(w.file("optimizer.pt"), optimizer_bytes.str());
    at::Tensor rng;
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      rng = gen.get_state();
    }
    safetensors_save(w.file("rng_state.safetensors"), {{"torch_cpu", rng}});
    nlohmann::json state = {{"global_step", I.step}, {"total_steps", I.total}, {"run", I.fingerprint(data)}};
    write_file_atomic(w.file(kState), state.dump(2) + "\n");
    w.commit();
  } catch (const c10::Error & e) {
    // (the temp folder is gone with the FolderWriter; the previous checkpoints are untouched)
    fail(str("cannot write the checkpoint '", dir, "': ", e.what_without_backtrace()));
  } catch (const std::exception & e) {
    fail(str("cannot write the checkpoint '", dir, "': ", e.what()));
  }
  I.checkpoint = dir;
  I.checkpoint_step = I.step;
  if (I.cb.on_save) I.cb.on_save(dir, I.step);
  if (I.opts.save_total_limit > 0) {
    auto all = checkpoints(I.opts.checkpoint_dir);
    for (size_t k = 0; k + I.opts.save_total_limit < all.size(); ++k) remove_tree(all[k].second);
  }
  return dir;
}

const std::vector<std::string> & resume_changeable_fields() {
  static const std::vector<std::string> fields = {"lr", "steps", "epochs", "lr_scheduler", "warmup_steps"};
  return fields;
}

std::vector<ResumeChange> Trainer::resume(const std::string & checkpoint, const SequenceSet & data) {
  auto & I = *impl_;
  const std::string state_file = checkpoint + "/" + kState;
  PEFT_CHECK(is_file(state_file), "'", checkpoint, "' is not a complete checkpoint (no ", kState, ")");
  const nlohmann::json state = read_json_file(state_file);
  PEFT_CHECK(state.contains("global_step") && state["global_step"].is_number_integer() && state.contains("run") &&
                 state["run"].is_object(),
             state_file, ": missing field 'global_step' or 'run'");
  const nlohmann::json now = I.fingerprint(data), then = state["run"];
  std::vector<ResumeChange> changes;
  for (auto it = now.begin(); it != now.end(); ++it) {
    const auto & allowed = I.opts.allow_changed;
    if (then.contains(it.key()) && then[it.key()] != it.value() &&
        std::find(allowed.begin(), allowed.end(), it.key()) != allowed.end()) {
      changes.push_back({it.key(), then[it.key()].dump(), it.value().dump()});
      continue;
    }
    PEFT_CHECK(then.contains(it.key()) && then[it.key()] == it.value(), state_file, ": the run differs from the ",
               "checkpoint's in '", it.key(), "' (checkpoint: ", then.value(it.key(), nlohmann::json()).dump(),
               ", now: ", it.value().dump(), "); resume with the same command and data",
               std::find(resume_changeable_fields().begin(), resume_changeable_fields().end(), it.key()) !=
                       resume_changeable_fields().end()
                   ? str(", or allow the change (", field_name(I.namer, "allow_changed"), " ", it.key(), ")")
                   : "");
  }
  torch::serialize::InputArchive archive;
  archive.load_from(checkpoint + "/optimizer.pt");
  I.optim->load(archive);
  auto rng = safetensors_load(checkpoint + "/rng_state.safetensors");
  PEFT_CHECK(rng.count("torch_cpu"), checkpoint, "/rng_state.safetensors: missing tensor 'torch_cpu'");
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng.at("torch_cpu"));
  }
  const int64_t step = state["global_step"].get<int64_t>();
  const int64_t total = total_steps(data);
  PEFT_CHECK(step <= total, state_file, ": the checkpoint is at step ", step, ", beyond this run's ", total,
             " steps");
  I.step = step;
  I.total = total;
  I.checkpoint = checkpoint;
  I.checkpoint_step = I.step;
  return changes;
}

}  // namespace peft
