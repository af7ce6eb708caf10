// Each subcommand registers itself on the app and returns the function that runs it.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>

namespace peft::cli {

using Runner = std::function<int()>;
Runner add_info(CLI::App & app);
Runner add_forward(CLI::App & app);
Runner add_train(CLI::App & app);
Runner add_generate(CLI::App & app);
Runner add_bench(CLI::App & app);
Runner add_merge(CLI::App & app);
Runner add_plot(CLI::App & app);
Runner add_bench_dist(CLI::App & app);
Runner add_chat_template(CLI::App & app);
Runner add_quantize(CLI::App & app);
Runner add_serve(CLI::App & app);
Runner add_bench_serve(CLI::App & app);
Runner add_export(CLI::App & app);
Runner add_eval(CLI::App & app);

}  // namespace peft::cli
