// peft: the command-line tool. Every error ends as a message on stderr: exit 2 for usage errors (bad
// flags), 1 for everything else.
#include <c10/util/Exception.h>

#include <iostream>
#include <map>

#include "commands.h"
#include "common.h"
#include "peft/util/options.h"

int main(int argc, char ** argv) {
  CLI::App app{"peft.cpp: parameter-efficient fine-tuning on LibTorch, eager and compiled"};
  app.require_subcommand(1);
  std::map<CLI::App *, peft::cli::Runner> runners;
  auto add = [&](peft::cli::Runner (*f)(CLI::App &)) {
    size_t before = app.get_subcommands({}).size();
    auto r = f(app);
    runners[app.get_subcommands({})[before]] = r;
  };
  add(peft::cli::add_info);
  add(peft::cli::add_forward);
  add(peft::cli::add_train);
  add(peft::cli::add_generate);
  add(peft::cli::add_bench);
  add(peft::cli::add_merge);
  add(peft::cli::add_plot);
  add(peft::cli::add_bench_dist);
  add(peft::cli::add_chat_template);
  add(peft::cli::add_quantize);
  add(peft::cli::add_serve);
  add(peft::cli::add_bench_serve);
  add(peft::cli::add_export);
  add(peft::cli::add_eval);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError & e) {
    // usage errors exit 2 (CLI11's message on stderr); --help exits 0
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    for (auto & kv : runners) {
      if (kv.first->parsed()) return kv.second();
    }
  } catch (const peft::cli::UsageError & e) {
    std::cerr << "error: " << e.what() << "\nRun with --help for more information.\n";
    return 2;
  } catch (const peft::OptionError & e) {
    // options that cannot work, named by the flags that set them
    std::cerr << "error: " << e.what() << "\nRun with --help for more information.\n";
    return 2;
  } catch (const c10::Error & e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception & e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 1;
}
