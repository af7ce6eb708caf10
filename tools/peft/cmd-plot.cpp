// peft plot: draw a training log's loss, eval loss and learning rate as a PNG (gnuplot).
#include <iostream>

#include "commands.h"
#include "common.h"
#include "peft/train/plot.h"

namespace peft::cli {

Runner add_plot(CLI::App & app) {
  struct Opts {
    std::string log, out;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("plot", "draw a training log (peft train --log-file) as a PNG");
  cmd->add_option("log", o->log, "LOG.jsonl written by peft train")->required();
  cmd->add_option("--out", o->out, "the PNG (default: the log with .png)");
  return [o]() {
    if (o->out.empty()) {
      const std::string & l = o->log;
      o->out = (l.size() > 6 && l.compare(l.size() - 6, 6, ".jsonl") == 0 ? l.substr(0, l.size() - 6) : l) + ".png";
    }
    check_output_file("--out", o->out, {o->log});
    plot_train_log(o->log, o->out);
    std::cout << o->out << "\n";
    return 0;
  };
}

}  // namespace peft::cli
